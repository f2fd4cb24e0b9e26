#!/usr/bin/env bash
# `ilf bench` on one GPU (speed): PixArt-alpha 1024 and DiT-XL/2 256 under the exact speed settings.
#
# Run from the repository root on the GPU machine (python3.12, torch >= 2.6, transformers 5.x, no internet),
# carrying the wheel folder `.whl` (diffusers + importlib_metadata, see docs/bench.md) when the image has no
# diffusers. Models are built from their configs with random weights (nothing is downloaded).
#     bash benchmarks/gpu_bench.sh              # ~5 min: CSVs, bench.log, summary.json under $OUT
#     SMOKE=1 bash benchmarks/gpu_bench.sh      # CPU smoke test of the same steps: `--tiny` width-24 models,
#                                               # 32 px, 1 round, dynamo only (plumbing, not a measurement)
# The most valuable measurements run first, each step in its own process with a cap that also respects the
# total BUDGET (s); `ilf bench` rewrites its CSV after every variant, so a step cut by its cap keeps the
# variants it finished, and a later failure leaves the earlier steps' results.
#   1 pixart-eager     PixArt-alpha 1024, baseline-20 / cache-t1 / ilf-t1, eager, SDPA default|cudnn|flash|efficient
#   2 pixart-regional  the same rows, every block compiled (inductor), the fastest SDPA backend of step 1
#   3 dit-eager-ro     DiT-XL/2 256, baseline-20 / cache-t1 / ilf-t1, eager then regional + CUDA graphs
#   4 dit-whole-ro     DiT-XL/2 256, baselines 20 / 12, whole-model compile + CUDA graphs (reduce-overhead)
#   5 pixart-regional-mat  PixArt-alpha 1024, baseline-20 / ilf-t1, regional, max-autotune-no-cudagraphs (GEMM autotuning)
#   6 pixart-whole     PixArt-alpha 1024, baseline-20, whole-model compile
#   7 dit-whole-ro-ilf DiT-XL/2 256, baseline-20 / ilf-t1, whole + CUDA graphs (each step kind may be its own graph)
# Peer rows (cache-dit, diffusers hooks) plug in through EXTRA_ROWS (comma-separated row names, appended to
# the rows of steps 1 and 3), e.g. EXTRA_ROWS=fbcache-0.2.
set -uo pipefail
OUT=${OUT:-results/bench/gpu}
mkdir -p "$OUT"
LOG="$OUT/bench.log"
EXTRA=${EXTRA_ROWS:+,$EXTRA_ROWS}
ROWS="baseline-20,cache-t1,ilf-t1$EXTRA"
if [ -n "${SMOKE:-}" ]; then  # CPU: every step's plumbing, tiny models at 32 px, 1 round, dynamo without inductor
  BUDGET=${BUDGET:-1200}; PY=${PY:-python}; export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD
  COMMON=(--device cpu --dtype fp32 --resolution 32 --repeats 1 --threads "${THREADS:-1}" --no-progress --tiny)
  CB=(--compile-backend eager); SDPA_ALL=default,math; SCALE=8
else
  BUDGET=${BUDGET:-290}; PY=${PY:-python3}
  COMMON=(--device cuda --dtype bf16 --repeats "${REPEATS:-3}" --no-progress)
  CB=(--compile-backend inductor); SDPA_ALL=default,cudnn,flash,efficient; SCALE=1
  source benchmarks/gpu_env.sh
fi
export OUT
{ date -u +"%F %T UTC"; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>/dev/null
  "$PY" -c "import sys, torch, diffusers; print('python', sys.version.split()[0], 'torch', torch.__version__, 'diffusers', diffusers.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"
} 2>&1 | tee "$LOG"

bench() {  # bench NAME CAP ARGS...: one `ilf bench` process, its CSV under $OUT, capped at min(CAP, budget left)
  local name=$1 cap=$(( $2 * SCALE )); shift 2
  local left=$(( BUDGET - SECONDS ))
  [ "$cap" -gt "$left" ] && cap=$left
  if [ "$cap" -lt 20 ]; then echo "== $name: skipped (budget spent, ${SECONDS}s)" | tee -a "$LOG"; return; fi
  echo "== $name (cap ${cap}s, elapsed ${SECONDS}s)" | tee -a "$LOG"
  timeout -k 5 "$cap" "$PY" -m ilf.cli bench "${COMMON[@]}" --out "$OUT/$name.csv" "$@" 2>&1 | tee -a "$LOG"
  echo "== $name: exit ${PIPESTATUS[0]} (124 = over its cap; the CSV keeps the variants it finished)" | tee -a "$LOG"
}

fastest_sdpa() {  # the SDPA backend whose eager baseline-20 was fastest in step 1 (default if none measured)
  "$PY" -m ilf.cli bench-summary --fastest-sdpa "$OUT/pixart-eager.csv" 2>/dev/null || echo default
}

bench pixart-eager 75 --backbone pixart-alpha-1024 --rows "$ROWS" --sdpa "$SDPA_ALL"
BEST=$(fastest_sdpa); echo "== fastest eager SDPA backend: $BEST" | tee -a "$LOG"
bench pixart-regional 80 --backbone pixart-alpha-1024 --rows "$ROWS" --sdpa "$BEST" --compile regional "${CB[@]}"
bench dit-eager-ro 70 --backbone dit-xl-2-256 --rows "$ROWS" --compile none,regional --compile-mode reduce-overhead "${CB[@]}"
bench dit-whole-ro 40 --backbone dit-xl-2-256 --rows baseline-20,baseline-12 --compile whole --compile-mode reduce-overhead "${CB[@]}"
bench pixart-regional-mat 80 --backbone pixart-alpha-1024 --rows baseline-20,ilf-t1 --sdpa "$BEST" --compile regional \
  --compile-mode max-autotune-no-cudagraphs "${CB[@]}"
bench pixart-whole 60 --backbone pixart-alpha-1024 --rows baseline-20 --sdpa "$BEST" --compile whole "${CB[@]}"
# last: ILF under whole-model compile recompiles per step kind (the CPU smoke test did not finish it in 205 s)
bench dit-whole-ro-ilf 50 --backbone dit-xl-2-256 --rows baseline-20,ilf-t1 --compile whole --compile-mode reduce-overhead "${CB[@]}"

"$PY" -m ilf.cli bench-summary "$OUT" 2>&1 | tee -a "$LOG"  # summary.json: the fastest exact setting per row
echo "total ${SECONDS}s" | tee -a "$LOG"
ls -la "$OUT"
