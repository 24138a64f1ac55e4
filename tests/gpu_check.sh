#!/usr/bin/env bash
# The GPU check, run through the device tool (results as JSON/text in $OUT), in two parts that
# each fit one device call (600 s): `tests/gpu_check.sh 1` checks correctness: the kernel tests
# compiled for the GPU, the e2e equivalence suite on CUDA (Triton kernels by default there), the
# memory plan against the CUDA peak, offload's copy waits against the plan's estimate;
# `tests/gpu_check.sh 2` the sharded state on one NCCL rank and both benchmarks. No argument:
# both. Wheels for what the image lacks are carried in .whl/ (xdsl, immutabledict,
# ordered-set, highspy: `pip download --only-binary :all: -d .whl ...` for the GPU machine's Python).
set -uo pipefail
part="${1:-all}"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
python3 -m pip install -q --no-deps --no-build-isolation --no-compile --target /tmp/site . || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 AUTOSP_CACHE_DIR=/tmp/autosp-cache
python3 -c "import torch, transformers, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name())" | tee "$OUT/versions.txt"
if [ "$part" = 1 ] || [ "$part" = all ]; then
  timeout 120 python3 -m pytest -q -p no:cacheprovider tests/unit/test_attention_kernels.py tests/unit/test_loss_kernels.py --junitxml="$OUT/kernels-cuda.xml" 2>&1 | tail -15 | tee "$OUT/kernels-cuda.txt"
  AUTOSP_TEST_DEVICE=cuda timeout 180 python3 -m pytest -q -p no:cacheprovider tests/e2e/test_equivalence.py --junitxml="$OUT/e2e-cuda.xml" 2>&1 | tail -15 | tee "$OUT/e2e-cuda.txt"
  timeout 100 python3 tests/gpu_memory.py "$OUT/memory-cuda.json" 2>&1 | tail -5
  timeout 120 python3 tests/gpu_offload.py "$OUT/offload-cuda.json" 2>&1 | tail -5
fi
if [ "$part" = 2 ] || [ "$part" = all ]; then
  timeout 90 python3 tests/gpu_sharded.py "$OUT/sharded-cuda.json" 2>&1 | tail -5
  timeout 150 python3 -m autosp.tools.bench kernels -o "$OUT/kernels.json" 2>&1 | tail -30
  timeout 250 python3 -m autosp.tools.bench train --preset llama-3.2-1b --methods autosp hf-eager hf-ckpt-chunked-loss \
    --throughput-seq 16384 262144 -o "$OUT/train.json" 2>&1 | tail -30
fi
