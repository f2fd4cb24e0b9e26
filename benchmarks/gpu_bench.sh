#!/usr/bin/env bash
# `ilf bench` on one GPU (issue [bench]): PixArt-alpha 1024 and DiT-XL/2 256, eager and torch.compile'd.
#
# Run from the repository root on the GPU machine (python3.12, torch 2.11, transformers 5.x, no diffusers,
# no internet), carrying the wheel folder `.whl` (diffusers 0.39.0 + importlib_metadata):
#     bash benchmarks/gpu_bench.sh            # writes 4 CSVs + bench.log to $OUT (default results/bench/gpu)
# Prepare `.whl` on a machine with pip (see docs/bench.md). Budget: about 4-5 minutes, capped per step.
set -uo pipefail
OUT=${OUT:-results/bench/gpu}
REPEATS=${REPEATS:-5}
mkdir -p "$OUT"
source benchmarks/gpu_env.sh
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  python3 -c "import sys, torch, diffusers, transformers; print('python', sys.version.split()[0], 'torch', torch.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
} 2>&1 | tee "$OUT/bench.log"

bench() {  # bench NAME SECONDS ARGS...: one `ilf bench` run, its log and CSV under $OUT, capped at SECONDS
  local name=$1 cap=$2; shift 2
  echo "== $name (cap ${cap}s, elapsed ${SECONDS}s)" | tee -a "$OUT/bench.log"
  timeout "$cap" python3 -m ilf.cli bench --device cuda --dtype bf16 --repeats "$REPEATS" --no-progress \
    --out "$OUT/$name.csv" "$@" 2>&1 | tee -a "$OUT/bench.log"
  local rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc (124 = over its cap)" | tee -a "$OUT/bench.log"
}

# 1. Every row at the paper's resolutions (baselines 20/12 steps, Table 1/4 cache, Table 1/4 ILF, Table 3, peers).
bench pixart-alpha-1024-eager "${CAP_PIXART:-150}" --backbone pixart-alpha-1024
bench dit-xl-2-256-eager "${CAP_DIT:-90}" --backbone dit-xl-2-256
# 2. torch.compile (regional: every block compiled) beside eager, on the Table 1 rows.
REPEATS=${COMPILE_REPEATS:-$REPEATS} bench pixart-alpha-1024-compile "${CAP_COMPILE:-180}" --backbone pixart-alpha-1024 \
  --rows "${COMPILE_ROWS:-baseline-20,cache-t1,ilf-t1}" --compile
if [ "$SECONDS" -lt "${DIT_COMPILE_BEFORE:-250}" ]; then
  bench dit-xl-2-256-compile 100 --backbone dit-xl-2-256 --rows baseline-20,cache-t1,ilf-t1 --compile
fi
echo "total ${SECONDS}s" | tee -a "$OUT/bench.log"
ls -la "$OUT"
