# Sourced by the GPU scripts (run from the repository root on the GPU machine, carrying `.whl`): installs
# diffusers (the newest `.whl/diffusers-*.whl`) + importlib_metadata from the wheels when the image lacks
# diffusers, cache-dit (`.whl/cache_dit-*.whl`, for the peer rows) when carried, and sets the environment.
# No network is used.
if ! python3 -c "import diffusers" 2>/dev/null; then
  whl=$(ls .whl/diffusers-*.whl 2>/dev/null | sort -V | tail -n 1)
  if [ -z "$whl" ]; then echo "gpu_env.sh: no diffusers on the image and no .whl/diffusers-*.whl carried" >&2; exit 1; fi
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
    "$whl" .whl/importlib_metadata-*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
cdit=$(ls .whl/cache_dit-*.whl 2>/dev/null | sort -V | tail -n 1)
if [ -n "$cdit" ] && ! python3 -c "import cache_dit" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "$cdit" \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
