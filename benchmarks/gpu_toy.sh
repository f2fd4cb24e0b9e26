#!/usr/bin/env bash
# Toy world on one GPU: a further pre-training stage of the shipped toy backbones, then the toy
# study's feedback trainings (configs/toy_study.yaml) on the new backbones. Everything else of the study
# (generation, toy metrics, tables) runs on a CPU with Snakemake afterwards (docs/toy.md, "Toy study").
#
# Run from the repository root on the GPU machine (python3.12, torch 2.11, no diffusers), carrying `.whl`
# (diffusers 0.39.0 + importlib_metadata), after or without benchmarks/gpu_bench.sh:
#     OUT=/tmp/toy bash benchmarks/gpu_toy.sh
# Writes $OUT/toy-t2i.tar, $OUT/toy-c2i.tar (ilf/toy/assets/toy-<task>/{transformer,pretrain.json}) and
# $OUT/toy-study-runs.tar (results/toy_study/runs + logs). Unpack them in the repository root.
set -uo pipefail
OUT=${OUT:-results/toy_study/gpu}
PRETRAIN_MINUTES=${PRETRAIN_MINUTES:-1.5}   # per backbone, one after the other
TRAIN_CAP=${TRAIN_CAP:-120}                 # seconds per feedback training
rm -rf results/toy_study/runs results/toy_study/latents  # the CPU-era runs would be resumed otherwise
mkdir -p "$OUT" results/toy_study/logs/gpu
source benchmarks/gpu_env.sh
LOGS=results/toy_study/logs/gpu
SECONDS=0

# 1. A further stage: continue from the shipped EMA weights, large batch, Min-SNR-5 weighting, bf16 autocast.
#    One run at a time (two processes on one GPU time-slice and each runs at half speed).
for task in t2i c2i; do
  python3 -m ilf.cli toy pretrain --task $task --out ilf/toy/assets/toy-$task --init-from ilf/toy/assets/toy-$task \
    --steps 1000000 --batch-size 2048 --lr 3e-4 --warmup 100 --min-snr-gamma 5 --bf16 --device cuda \
    --max-minutes "$PRETRAIN_MINUTES" > $LOGS/pretrain-$task.log 2>&1
  echo "pretrain $task done at ${SECONDS}s"; tail -c 300 $LOGS/pretrain-$task.log
  tar -cf "$OUT/toy-$task.tar" ilf/toy/assets/toy-$task/transformer ilf/toy/assets/toy-$task/pretrain.json
done

# 2. The toy study's latents and feedback trainings (the commands of `snakemake -n -p --configfile
#    configs/toy_study.yaml`), one at a time, each capped; checkpoints every 100 iterations.
python3 -m ilf.cli precompute --config configs/train/toy_c2i.yaml --out results/toy_study/latents/toy_c2i --no-progress \
  > $LOGS/precompute-c2i.log 2>&1
echo "precompute done at ${SECONDS}s"
SETS=(--set optim.lr=0.001 --set global_batch_size=64 --set micro_batch_size=64 --set iterations=300
      --set checkpoint_interval=100 --set 'keep_iterations=[100, 300]')
for mode in fast standard none; do
  run=toy_c2i_$mode
  timeout "$TRAIN_CAP" python3 -m ilf.cli train --config configs/train/toy_c2i.yaml --out results/toy_study/runs/$run \
    --resume --no-progress --latents results/toy_study/latents/toy_c2i --set "name=\"$run\"" "${SETS[@]}" \
    --set "distill=\"$mode\"" > $LOGS/train-$run.log 2>&1
  echo "train $run: exit $? at ${SECONDS}s"
done
# Weights and logs only (optimizer states stay behind: the returned files are limited to 16 MiB each).
tar -cf "$OUT/toy-study-runs.tar" --exclude='optimizer*' --exclude='*rng*' results/toy_study/runs $LOGS
echo "total ${SECONDS}s"; ls -la "$OUT"
