# make demo: export a tiny Llama, compile it, train 20 steps on CPU, check grads and final weights against eager.
# make test: the layering contract, every test (pytest + lit). Both create .venv on first use.
# pytest: 2 workers, each test file on one of them (a file's module fixtures are built once).
PY := .venv/bin/python
STAMP := .venv/.installed

# What the GPU machines (Python 3.12, torch/triton/transformers installed) lack, as cp312 wheels
# in .whl/ at the versions this venv tests with; tests/gpu_check.sh installs them there.
GPU_WHEELS := xdsl immutabledict ordered-set highspy
WHEEL_PLATFORMS := $(foreach n,manylinux_2_28 manylinux_2_27 manylinux_2_17 manylinux2014 manylinux1,--platform $(n)_x86_64)

.PHONY: demo test bench clean gpu-wheels

$(STAMP): pyproject.toml
	@if [ ! -x $(PY) ]; then \
	  if python3 -c "import torch" 2>/dev/null; then python3 -m venv --system-site-packages .venv; \
	  else python3 -m venv .venv; fi; fi
	@# CPU machines: the local CPU wheel of torch, before anything can pull a CUDA build.
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

demo: $(STAMP)
	$(PY) -m autosp.tools.demo

test: $(STAMP)
	.venv/bin/lint-imports
	$(PY) -m pytest -q -n 2 --dist loadfile tests
	.venv/bin/lit -q tests/lit

gpu-wheels: $(STAMP)
	rm -rf .whl && mkdir .whl
	$(PY) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $(WHEEL_PLATFORMS) -d .whl \
	  $$($(PY) -m pip freeze | grep -iE '^($(subst $(eval) ,|,$(GPU_WHEELS)))==')
	@ls .whl

clean:
	rm -rf .venv build *.egg-info .whl
