#!/usr/bin/env bash
# The peers on the GPU, a short second pass after gpu_smoke.sh / gpu_bench.sh: the peer methods
# (diffusers' hooks, cache-dit) through the stock pipelines in bf16/fp16 on the real architectures, the peer rows
# of `ilf bench` beside the Table 1 rows on PixArt-alpha 1024, and DiT-XL/2 whole-model compile + CUDA graphs.
#     bash benchmarks/gpu_peers.sh      # on the GPU machine, repository root, carrying .whl; about 3.5 minutes
set -uo pipefail
OUT=${OUT:-results/bench/gpu}
mkdir -p "$OUT"
source benchmarks/gpu_env.sh
timeout "${CAP_SMOKE:-80}" python3 benchmarks/gpu_smoke.py --out "$OUT" --no-train-compile \
  --methods baseline,fbcache,dbcache-static,dbcache-dynamic-ts,taylorseer,pab,fastercache 2>&1 | grep -E "^(PASS|FAIL|ilf|[0-9]+ passed)"
COMMON=(--device cuda --dtype bf16 --repeats 3 --no-progress)
timeout "${CAP_PEERS:-75}" python3 -m ilf.cli bench "${COMMON[@]}" --backbone pixart-alpha-1024 --sdpa cudnn \
  --rows baseline-20,cache-t1,ilf-t1,dbcache-static,dbcache-dynamic,fbcache-0.2,taylorseer --out "$OUT/pixart-peers.csv" 2>&1 | grep -v Cache-DiT
timeout "${CAP_DIT:-80}" python3 -m ilf.cli bench "${COMMON[@]}" --backbone dit-xl-2-256 --rows baseline-20,ilf-t1 \
  --compile whole --compile-mode reduce-overhead --out "$OUT/dit-whole-ro.csv" 2>&1 | grep -v Cache-DiT
echo "total ${SECONDS}s"
