#!/usr/bin/env bash
# The embedded-dataset experiment of the README: plain cross-entropy vs RIA
# (stop-gradient and full second-order channel weights) over seeds.
# Usage: bash scripts/demo_experiment.sh OUT_DIR [EPOCHS] [SEEDS...]
# Then: python scripts/summarize.py OUT_DIR/*  (prints the README table)
set -euo pipefail
out=${1:?usage: demo_experiment.sh OUT_DIR [EPOCHS] [SEEDS...]}
epochs=${2:-8}
shift $(( $# >= 2 ? 2 : 1 ))
seeds=("${@:-0}")
[ ${#seeds[@]} -eq 0 ] && seeds=(0)
cd "$(dirname "$0")/.."
for seed in "${seeds[@]}"; do
  for variant in ce ria_stop ria_full; do
    case $variant in
      ce) extra=(--config.loss.beta=0) ;;
      ria_stop) extra=(--config.ria.weights_gradient=stop) ;;
      ria_full) extra=(--config.ria.weights_gradient=full) ;;
    esac
    wd="$out/${variant}_seed${seed}"
    [ -f "$wd/results.json" ] && continue
    python launch.py --config=configs/demo.py --workdir="$wd" --config.seed="$seed" \
      --config.train.num_epochs="$epochs" --config.eval.figures=True "${extra[@]}" > "$wd.log" 2>&1
  done
done
