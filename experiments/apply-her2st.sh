#!/usr/bin/env bash
# A trained model applied to a whole slide without ST (docs/apply.md): the clip/partial model of fold B of the
# frozen-trunk run (trained on patients A and C only) exported as a bundle, then run on section B4's H&E image
# (patient B, held out from that model). The slide's TIFF records no µm/px; the HEST-1k metadata's estimate is given.
# Usage: bash experiments/apply-her2st.sh   (needs runs/stage2-cached-2 from experiments/her2st-frozen.yaml)
set -euo pipefail
RUN=${RUN:-runs/stage2-cached-2}
HEST=${HEST:-../shared/realdata/hest}
export HF_HUB_OFFLINE=1
stguide export "$RUN" --method clip/partial --fold B --out runs/models/clip-partial-B
MPP=$(python -c "import json; print(json.load(open('$HEST/metadata/SPA145.json'))['pixel_size_um_estimated'])")
stguide predict "$HEST/wsis/SPA145.tif" --model runs/models/clip-partial-B --um-per-px "$MPP" --out runs/predict/B4-clip-partial-B
mkdir -p docs/figures && cp runs/predict/B4-clip-partial-B/map.png docs/figures/predict-B4-clip-partial-B.png
