#!/usr/bin/env bash
# GPU smoke: PixArt-alpha 1024 and DiT-XL/2 256 (real architectures, random weights, no download) in
# bf16 and fp16 through the stock pipelines with every method (baseline, ILF, cache, the peers listed in
# benchmarks/gpu_smoke.py), one ILF training step, and the compiled pipeline; prints PASS/FAIL per case.
#
#     bash benchmarks/gpu_smoke.sh             # on the GPU machine, from the repository root (about 2-4 minutes)
#     bash benchmarks/gpu_smoke.sh --cpu       # tiny configs on the CPU: checks this script (tests/bench/test_gpu_smoke.py)
#
# Writes $OUT/smoke.log (default results/bench/gpu); exit status 1 if any case failed, 124 if over CAP seconds.
set -uo pipefail
OUT=${OUT:-results/bench/gpu}
CAP=${CAP:-$([[ " $* " == *" --cpu "* ]] && echo 1200 || echo 290)}
mkdir -p "$OUT"
if [[ " $* " != *" --cpu "* ]]; then
  source benchmarks/gpu_env.sh
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$OUT/smoke-env.log"
  PY=${PYTHON:-python3}
else
  export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD
  PY=${PYTHON:-python3}
fi
timeout "$CAP" "$PY" benchmarks/gpu_smoke.py --out "$OUT" "$@"
rc=$?
echo "gpu_smoke: exit $rc (124 = over ${CAP}s), log $OUT/smoke.log"
exit $rc
