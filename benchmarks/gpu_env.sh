# Sourced by the GPU scripts (run from the repository root on the GPU machine, carrying `.whl`): installs
# diffusers 0.39.0 + importlib_metadata from the wheels when the image lacks diffusers, and sets the environment.
if ! python3 -c "import diffusers" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
    .whl/diffusers-0.39.0-py3-none-any.whl .whl/importlib_metadata-*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
