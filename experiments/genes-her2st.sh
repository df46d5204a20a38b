#!/usr/bin/env bash
# Stage 1 on real HER2ST (all 36 sections, labels of the 5 labelled patients in the shared copy):
# gene-side leave-one-patient-out for logexpr, pca, harmony, scvi, scanvi, sysvi, then the batch/biology audit.
# Usage: bash experiments/genes-her2st.sh   (ROOT and OUT may be overridden)
set -euo pipefail
ROOT=${ROOT:-../shared/realdata/her2st}
OUT=${OUT:-runs/genes-her2st}
CFG=experiments/genes-her2st.yaml
ENC="logexpr pca harmony scvi scanvi sysvi"
export HF_HUB_OFFLINE=1
mkdir -p "$OUT"
stguide data her2st "$ROOT" --out "$OUT/her2st.h5ad"
stguide genes lopo --data "$OUT/her2st.h5ad" --config "$CFG" --encoders $ENC --out "$OUT/lopo"
stguide genes audit --data "$OUT/her2st.h5ad" --config "$CFG" --encoders $ENC --out "$OUT/audit"
