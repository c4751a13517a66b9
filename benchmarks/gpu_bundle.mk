# `make gpu-bundle`: the wheels the GPU machine's image lacks, collected into .whl/ (git-ignored),
# which travels with benchmarks/gpu_suite.sh (carry it) and is installed there with --no-index.
# Included from the Makefile (it uses $(PY), the venv's Python, when the venv exists: pip is all it needs).
#
# The image (shared/spec/GPU_MACHINE.md; the device library's KINDS.md lists every package) has
# jax, flax, optax, orbax, tensorstore, OpenCV, absl, scikit-image, PyYAML, protobuf, packaging and
# tqdm. Of what the training engine and benchmarks/train_throughput.py import, it lacks only these
# pure-Python packages, whose own requirements are all on the image. Versions: constraints.txt's.
GPU_WHEELS := ml_collections tensorboardX
GPU_WHEEL_DIR := .whl
GPU_WHEEL_PLATFORMS := manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 \
  manylinux2014_x86_64 manylinux1_x86_64

.PHONY: gpu-bundle
gpu-bundle:
	rm -rf $(GPU_WHEEL_DIR) && mkdir -p $(GPU_WHEEL_DIR)
	pins=; for p in $(GPU_WHEELS); do \
	  pin=$$(grep -i "^$$p==" constraints.txt) || { echo "error: constraints.txt: no pin for $$p" >&2; exit 1; }; \
	  pins="$$pins $$pin"; \
	done; \
	$(or $(wildcard $(PY)),python3) -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
	  --python-version 3.12 --implementation cp $(addprefix --platform ,$(GPU_WHEEL_PLATFORMS)) \
	  -d $(GPU_WHEEL_DIR) $$pins
	@ls -l $(GPU_WHEEL_DIR)
	@echo "carry $(GPU_WHEEL_DIR) with benchmarks/gpu_suite.sh"
