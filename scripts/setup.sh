#!/usr/bin/env bash
# Make (or refresh) the project's virtual environment at .venv from pinned versions.
# Idempotent: re-running with unchanged requirements only re-checks a stamp.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.ilf-requirements.sha
want=$(cat requirements.txt requirements-nodeps.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt 2>&1 | { grep -v "is ignored: it is neither" || true; }
  # Packages whose declared requirements conflict with ours or pull in unused tools (image-reward pins timm 0.6,
  # pyiqa declares datasets, bitsandbytes, tensorboard, ...):
  # installed without their dependency resolution; what they need at run time is in requirements.txt.
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -r requirements-nodeps.txt 2>&1 | { grep -v "is ignored: it is neither" || true; }
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e . 2>&1 | { grep -v "is ignored: it is neither" || true; }
  .venv/bin/python -c "import torch, diffusers, ilf" 
  echo "$want" > "$stamp"
fi
echo "[setup] .venv ready: $(.venv/bin/python -c 'import torch, diffusers; print("torch", torch.__version__, "diffusers", diffusers.__version__)')"
