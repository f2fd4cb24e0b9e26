#!/usr/bin/env bash
# `ilf bench` on one GPU (speed): PixArt-alpha 1024 and DiT-XL/2 256 under the exact speed settings, and the
# real FLUX.1-dev, SD3.5-large, Qwen-Image and Wan2.1-T2V-1.3B architectures (bf16, random weights).
#
# Run from the repository root on the GPU machine (python3.12, torch >= 2.6, transformers 5.x, no internet),
# carrying the wheel folder `.whl` (diffusers + importlib_metadata, see docs/bench.md) when the image has no
# diffusers. Models are built from their configs with random weights (nothing is downloaded).
#     bash benchmarks/gpu_bench.sh              # ~8 min (BUDGET=480 s): CSVs, bench.log, parts.log, summary.json
#                                               # under $OUT (default results/bench/gpu/<card name>_<date>)
#     PARTS=flux-eager,wan-eager bash benchmarks/gpu_bench.sh   # only these parts (names below)
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
# The flow-matching families run after step 1, eager first (rows of `ilf bench`: baseline-S at the model card's
# steps, cache-t1, ilf-t1, dbcache-t1 at ILF's budget; sizes reduced to fit the budget, stated in each CSV):
#   f1 flux-eager      FLUX.1-dev 1024 px, 512 text tokens, 28 steps, embedded guidance 3.5, 1 round
#   f2 sd35-eager      SD3.5-large 1024 px, 77 + 256 text tokens, 28 steps, CFG 3.5 (one batched call), 1 round
#   f3 qwen-eager      Qwen-Image 512 px, 64 text tokens, 50 steps, true CFG 4.0 (two calls per step), 1 round
#   f4 wan-eager       Wan2.1-T2V-1.3B 480x832, 9 frames, 512 text tokens, 50 steps, CFG 5.0 (two calls), 1 round
#   f5 flux-regional   FLUX.1-dev 512 px, baseline-28 / ilf-t1, every block compiled (inductor), 2 rounds
# Order: 1, f1-f4, 2, f5, 3-7. Each part's cap is printed before it runs and logged with its exit status and
# elapsed seconds in $OUT/parts.log; a part whose cap would pass the deadline is cut to it, one with < 20 s
# left is skipped and logged as skipped.
# Peer rows (cache-dit, diffusers hooks) plug in through EXTRA_ROWS (comma-separated row names, appended to
# the rows of steps 1 and 3), e.g. EXTRA_ROWS=fbcache-0.2.
set -uo pipefail
if [ -z "${OUT:-}" ]; then  # results/bench/gpu/<card name>_<date> on a GPU (e.g. NVIDIA-H100-80GB-HBM3_2026-12-07)
  card=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1 | tr -c 'A-Za-z0-9._\n-' '-')
  OUT=results/bench/gpu/${card:-cpu}_$(date -u +%F)
fi
mkdir -p "$OUT"
LOG="$OUT/bench.log"
EXTRA=${EXTRA_ROWS:+,$EXTRA_ROWS}
ROWS="baseline-20,cache-t1,ilf-t1$EXTRA"
if [ -n "${SMOKE:-}" ]; then  # CPU: every step's plumbing, tiny models at 32 px, 1 round, dynamo without inductor
  BUDGET=${BUDGET:-1200}; PY=${PY:-python}; export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD
  COMMON=(--device cpu --dtype fp32 --resolution 32 --repeats 1 --threads "${THREADS:-1}" --no-progress --tiny)
  CB=(--compile-backend eager); SDPA_ALL=default,math; SCALE=8
  SIZE_FLUX=(--text-tokens 8); SIZE_SD3=(--text-tokens 8); SIZE_QWEN=(--text-tokens 8); SIZE_WAN=(--text-tokens 8 --frames 5)
  SIZE_FLUX_C=(--text-tokens 8)
else
  BUDGET=${BUDGET:-480}; PY=${PY:-python3}
  COMMON=(--device cuda --dtype bf16 --repeats "${REPEATS:-3}" --no-progress)
  CB=(--compile-backend inductor); SDPA_ALL=default,cudnn,flash,efficient; SCALE=1
  # analytic baseline run at ~400 TFLOP/s: FLUX.1-dev 1024 px 2.7 PFLOP ~7 s, SD3.5-large 1024 px (CFG batch) ~5 s,
  # Qwen-Image 512 px (two calls per step) ~4 s, Wan 1.3B 9 frames ~4 s; x 3 runs per row (reference, warm-up, 1 round)
  SIZE_FLUX=(--resolution 1024 --repeats 1); SIZE_SD3=(--resolution 1024 --repeats 1)
  SIZE_QWEN=(--resolution 512 --text-tokens 64 --repeats 1); SIZE_WAN=(--resolution 480 --frames 9 --repeats 1)
  SIZE_FLUX_C=(--resolution 512 --repeats 2)
  source benchmarks/gpu_env.sh
fi
export OUT
PARTS_LOG="$OUT/parts.log"
{ date -u +"%F %T UTC"; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>/dev/null
  "$PY" -c "import sys, torch, diffusers; print('python', sys.version.split()[0], 'torch', torch.__version__, 'diffusers', diffusers.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"
} 2>&1 | tee "$LOG"

PLAN=(pixart-eager:75 flux-eager:100 sd35-eager:80 qwen-eager:70 wan-eager:70 pixart-regional:80 flux-regional:90
      dit-eager-ro:70 dit-whole-ro:40 pixart-regional-mat:80 pixart-whole:60 dit-whole-ro-ilf:50)
{ echo "budget ${BUDGET}s; planned caps (s, x$SCALE), cumulative:"; total=0
  for p in "${PLAN[@]}"; do total=$(( total + ${p#*:} * SCALE )); echo "  ${p%%:*} $(( ${p#*:} * SCALE )) $total"; done
} | tee -a "$LOG" "$PARTS_LOG"

bench() {  # bench NAME CAP ARGS...: one `ilf bench` process, its CSV under $OUT, capped at min(CAP, budget left)
  local name=$1 cap=$(( $2 * SCALE )); shift 2
  if [ -n "${PARTS:-}" ] && [[ ",$PARTS," != *",$name,"* ]]; then return; fi
  local left=$(( BUDGET - SECONDS )) start=$SECONDS
  [ "$cap" -gt "$left" ] && cap=$left
  if [ "$cap" -lt 20 ]; then
    echo "== $name: skipped (budget spent, ${SECONDS}s)" | tee -a "$LOG"; echo "$name skipped at ${SECONDS}s" >> "$PARTS_LOG"
    return
  fi
  echo "== $name (cap ${cap}s, elapsed ${SECONDS}s)" | tee -a "$LOG"
  timeout -k 5 "$cap" "$PY" -m ilf.cli bench "${COMMON[@]}" --out "$OUT/$name.csv" "$@" 2>&1 | grep --line-buffered -v Cache-DiT | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc (124 = over its cap; the CSV keeps the variants it finished)" | tee -a "$LOG"
  echo "$name exit $rc cap ${cap}s took $(( SECONDS - start ))s" >> "$PARTS_LOG"
}

fastest_sdpa() {  # the SDPA backend whose eager baseline-20 was fastest in step 1 (default if none measured)
  "$PY" -m ilf.cli bench-summary --fastest-sdpa "$OUT/pixart-eager.csv" 2>/dev/null || echo default
}

FAMILY_ROWS="cache-t1,ilf-t1,dbcache-t1"  # the families skip the profiled run (minutes on thousands of block calls)
bench pixart-eager 75 --backbone pixart-alpha-1024 --rows "$ROWS" --sdpa "$SDPA_ALL"
BEST=$(fastest_sdpa); echo "== fastest eager SDPA backend: $BEST" | tee -a "$LOG"
bench flux-eager 100 --no-profile --backbone flux1-dev --rows "$FAMILY_ROWS" "${SIZE_FLUX[@]}"
bench sd35-eager 80 --no-profile --backbone sd35-large --rows "$FAMILY_ROWS" "${SIZE_SD3[@]}"
bench qwen-eager 70 --no-profile --backbone qwen-image --rows "$FAMILY_ROWS" "${SIZE_QWEN[@]}"
bench wan-eager 70 --no-profile --backbone wan21-t2v-1.3b --rows "$FAMILY_ROWS" "${SIZE_WAN[@]}"
bench pixart-regional 80 --backbone pixart-alpha-1024 --rows "$ROWS" --sdpa "$BEST" --compile regional "${CB[@]}"
bench flux-regional 90 --no-profile --backbone flux1-dev --rows ilf-t1 --compile regional "${CB[@]}" "${SIZE_FLUX_C[@]}"
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
