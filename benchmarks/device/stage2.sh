#!/bin/bash
# Stage-2 end-to-end throughput on a lent GPU machine, with bf16 (issue 16): one prepared command for the `device`
# tool. It runs benchmarks/stage2_throughput.py there (train_contrastive with precision auto = bf16-mixed on the
# GPU, against the bare forward + backward + AdamW step under bf16 autocast on in-memory tensors of the same shape
# and batch) on synthetic 224 px patches, and writes results.json and the log under $OUT (or ./device-out here).
#
# Here, once:  make device-wheels            (the packages the GPU image lacks, into .whl/, ignored by git)
# There:       run(command="bash benchmarks/device/stage2.sh", carry=[".whl"], timeout_s=540)
# On a CPU it runs the same way with the .venv (python=.venv/bin/python SPOTS=64 BATCH=16 bash benchmarks/device/stage2.sh),
# which is how the script itself is checked where no GPU is lent.
set -euo pipefail
out=${OUT:-device-out}
mkdir -p "$out"
python=${python:-python3}
if ! "$python" -c "import anndata" 2> /dev/null && compgen -G ".whl/*.whl" > /dev/null; then  # the GPU image lacks them
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
    "$python" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
    "$python" benchmarks/stage2_throughput.py --patches /nonexistent --spots "${SPOTS:-4096}" --batch-size "${BATCH:-128}" \
        --num-workers "${WORKERS:-8}" --reps 2 --results "$out/stage2_throughput"
} 2>&1 | tee "$out/stage2.log"
