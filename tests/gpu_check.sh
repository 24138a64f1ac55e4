#!/usr/bin/env bash
# The GPU check, run through the device tool: the e2e equivalence suite on CUDA with the
# machine's own torch (2.11 there), plus the demo. Wheels for what the image lacks are carried
# in .whl/ (xdsl, immutabledict, ordered-set, highspy: `pip download --only-binary :all: -d .whl ...`
# for the GPU machine's Python). Results land in $OUT.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
python3 -m pip install -q --no-deps --no-build-isolation --no-compile --target /tmp/site . || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 AUTOSP_CACHE_DIR=/tmp/autosp-cache
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name())" | tee "$OUT/versions.txt"
AUTOSP_TEST_DEVICE=cuda python3 -m pytest -q -p no:cacheprovider tests/e2e/test_equivalence.py --junitxml="$OUT/e2e-cuda.xml" 2>&1 | tail -15 | tee "$OUT/e2e-cuda.txt"
python3 -m pytest -q -p no:cacheprovider tests/e2e tests/unit/test_ir.py --junitxml="$OUT/cpu-torch211.xml" 2>&1 | tail -15 | tee "$OUT/cpu-torch211.txt"
python3 tests/gpu_memory.py "$OUT/memory-cuda.json" 2>&1 | tail -5
