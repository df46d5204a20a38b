#!/usr/bin/env bash
# Issue 3's investigation of scVI on real HER2ST, after experiments/genes-her2st.sh (which writes her2st.h5ad).
# Gene-side LOPO of scvi (5 folds) with (1) the section as the batch and (2) 5,000 HVGs; then (3) 200 epochs (the
# package default, 4× the main run's 50): the LOPO, then the batch audit on all sections, one after the other (run
# alone: on 2 cores, two jobs side by side were far slower). Each is read beside the main run's scvi (patient as the
# batch, 2,000 HVGs, 50 epochs).
# Cells are cached: a re-run continues where it stopped.
# Usage: bash experiments/genes-her2st-checks.sh   (OUT may be overridden)
set -euo pipefail
OUT=${OUT:-runs/genes-her2st}
export HF_HUB_OFFLINE=1
test -f "$OUT/her2st.h5ad" || { echo "run experiments/genes-her2st.sh first ($OUT/her2st.h5ad is missing)" >&2; exit 2; }
stguide genes lopo --data "$OUT/her2st.h5ad" --config experiments/genes-her2st.yaml --encoders scvi --batch-key section --out "$OUT/check-section"
stguide genes lopo --data "$OUT/her2st.h5ad" --config experiments/genes-her2st-hvg5000.yaml --encoders scvi --out "$OUT/check-hvg5000"
stguide genes lopo --data "$OUT/her2st.h5ad" --config experiments/genes-her2st-e200.yaml --encoders scvi --out "$OUT/check-e200"
stguide genes audit --data "$OUT/her2st.h5ad" --config experiments/genes-her2st-e200.yaml --encoders scvi --out "$OUT/check-e200-audit"
