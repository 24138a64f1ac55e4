#!/usr/bin/env bash
# The GPU check: one device call of at most 8 minutes (machine start not counted), results in
# $OUT as they come (each part's own JSON/text, and parts.jsonl: a line per part with its exit
# status and seconds). Each part has its own time limit; a part that fails or runs out of time
# is recorded and the next one runs. Before it, `make gpu-wheels` puts in .whl/ the cp312 wheels
# the GPU machine lacks (carry .whl).
#
#   tests/gpu_check.sh            run it (on the GPU machine, with $OUT set)
#   tests/gpu_check.sh --dry-run  print the parts, their limits and the wheels it would install
set -uo pipefail
cd "$(dirname "$0")/.."
DEADLINE=470  # seconds from the start for every part (8 minutes, less a margin)
OUT="${OUT:-/tmp/gpu-check}"

PARTS=(
  # name | seconds | command
  "versions|20|python3 -c 'import json, sys, torch, triton, transformers; print(json.dumps({\"python\": sys.version.split()[0], \"torch\": torch.__version__, \"triton\": triton.__version__, \"transformers\": transformers.__version__, \"cuda\": torch.version.cuda, \"cudnn\": torch.backends.cudnn.version(), \"gpu\": torch.cuda.get_device_name(), \"capability\": torch.cuda.get_device_capability()}))' | tee \$OUT/versions.json && nvidia-smi | tee \$OUT/nvidia-smi.txt"
  "probes|45|python3 tests/gpu_probes.py \$OUT/probes.json"
  "kernel-tests|75|python3 -m pytest -q -p no:cacheprovider tests/unit/test_attention_kernels.py tests/unit/test_loss_kernels.py --junitxml=\$OUT/kernel-tests.xml"
  "attention-speed|90|python3 -m autosp.tools.bench kernels --seq 4096 16384 65536 -o \$OUT/kernels.json"
  "equivalence|75|AUTOSP_TEST_DEVICE=cuda python3 -m pytest -q -p no:cacheprovider tests/e2e/test_equivalence.py -k 'Llama or Qwen2 or generated' --junitxml=\$OUT/equivalence.xml"
  "memory-plan|60|python3 tests/gpu_memory.py \$OUT/memory.json"
  "offload|50|python3 tests/gpu_offload.py \$OUT/offload.json"
  "zero3-nccl|35|python3 tests/gpu_sharded.py \$OUT/sharded.json"
  "train-ladder|0|python3 -m autosp.tools.bench train --preset llama-3.2-1b --layers 2 --max-seq 262144 --methods autosp hf-eager hf-ckpt-chunked-loss --throughput-seq 16384 65536 -o \$OUT/train.json"
)

INSTALL=(
  "python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl"
  "python3 -m pip install -q --no-deps --no-build-isolation --no-compile --no-cache-dir --upgrade --target /tmp/site ."
)

if [ "${1:-}" = "--dry-run" ]; then
  echo "install (into /tmp/site):"
  if compgen -G ".whl/*.whl" >/dev/null; then
    for wheel in .whl/*.whl; do echo "  $(basename "$wheel")"; done
  else
    echo "  .whl/ holds no wheels: run 'make gpu-wheels' first"
  fi
  printf '  %s\n' "${INSTALL[@]}"
  echo "parts, in order (all within ${DEADLINE} s; a limit of 0: whatever time is left):"
  for part in "${PARTS[@]}"; do
    IFS='|' read -r name seconds command <<<"$part"
    printf '  %-16s %4s s  %s\n' "$name" "$seconds" "$command"
  done
  exit 0
fi

mkdir -p "$OUT"
export OUT
started=$SECONDS
for step in "${INSTALL[@]}"; do eval "$step" || { echo "install failed: $step"; exit 1; }; done
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 AUTOSP_CACHE_DIR=/tmp/autosp-cache

for part in "${PARTS[@]}"; do
  IFS='|' read -r name seconds command <<<"$part"
  left=$((DEADLINE - (SECONDS - started)))
  if [ "$seconds" = 0 ] || [ "$seconds" -gt "$left" ]; then seconds=$left; fi
  if [ "$seconds" -lt 10 ]; then
    echo "{\"part\": \"$name\", \"skipped\": \"no time left\"}" >>"$OUT/parts.jsonl"
    continue
  fi
  echo "=== $name (limit ${seconds} s)"
  begun=$SECONDS
  timeout --kill-after=5 "$seconds" bash -o pipefail -c "$command" >"$OUT/$name.txt" 2>&1
  rc=$?
  tail -n 15 "$OUT/$name.txt"
  echo "{\"part\": \"$name\", \"rc\": $rc, \"seconds\": $((SECONDS - begun)), \"limit\": $seconds}" | tee -a "$OUT/parts.jsonl"
done
