#!/usr/bin/env bash
# Image → expression on real HER2ST (docs/results.md): retrieval (BLEEP's) and ridge (HEST-Benchmark's baseline),
# leave-one-patient-out with the models of the frozen-trunk run, Pearson r per gene for the top 50 HVGs of the
# training patients and the markers, pooled over the held-out patient and per slide.
# Usage: bash experiments/expression-her2st.sh   (needs runs/stage2-cached-2 from experiments/her2st-frozen.yaml)
set -euo pipefail
RUN=${RUN:-runs/stage2-cached-2}
export HF_HUB_OFFLINE=1
for m in imagenet clip ours-scvi clip/partial ours-scvi/partial; do
  stguide expression "$RUN" --method "$m" --out "runs/expression/${m//\//_}"
done
