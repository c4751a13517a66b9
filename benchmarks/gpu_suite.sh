#!/usr/bin/env bash
# The training benchmark on a GPU machine, as one command that ends within 4 minutes.
#
#   benchmarks/gpu_suite.sh [--smoke] [OUT_DIR]      (OUT_DIR: default $OUT, else bench_out)
#
# The machine's image lacks some pure-Python packages and cannot reach a registry: run
# `make gpu-bundle` here first and carry the .whl/ folder with the command. The suite installs
# those wheels (and nothing else) into /tmp/site and puts them on PYTHONPATH.
#
# 1. benchmarks.train_throughput: cases in priority order (the headline numbers first) in ONE
#    process, so JAX starts and the faceset is built once; each finished case is appended at once as
#    a Markdown row to OUT_DIR/train_throughput.md and the JSON OUT_DIR/train_throughput.json is
#    rewritten, so a run cut short keeps every case it finished. No case starts after BUDGET_S
#    seconds (default 80: on an H200 a case took ~50 s, mostly compiling), and `timeout` stops it
#    at 130 s.
# 2. benchmarks.compare_torch: the headline case against the independent PyTorch SAEHD
#    (benchmarks/baselines/torch_saehd.py) in eager and torch.compile modes, with the image's own
#    torch (OUT_DIR/compare_torch.md and .json); ours reuses part 1's compiled programs from the
#    cache. Without torch it prints "torch absent" and measures nothing.
# 3. benchmarks.train_breakdown: the first case's step split into data, augmentation, losses, model
#    and full step (OUT_DIR/train_breakdown.md and .json), stopped at 60 s. Its full and model-only
#    steps are the first part's programs, found in the persistent XLA cache set below (on an H200
#    with 128 faces it took 73 s with a cold cache, 30 s with one holding the model-only step).
# 4. benchmarks.memory_savers: remat none/dots/full on the tiny preset at 64 px (temp memory from the
#    compiled step, step time), stopped at 30 s (OUT_DIR/memory_savers.md and .json). Not in --smoke.
#    Its full sizes (GAN, FSDP, offload, bf16 all-reduce at 128 px) need `benchmarks.suite --size=gpu`.
# Every part is cut at its own limit and at the suite's deadline (DEADLINE_S, default 240 s from
# the start); a part with under 10 s left is skipped with a message.
# OUT_DIR/env.txt records the card and versions: name the card when recording the numbers.
#
# --smoke shrinks everything to one tiny case (32 px, batch 2, 2 steps) to check the script end to
# end on a CPU, e.g. PYTHON=.venv/bin/python benchmarks/gpu_suite.sh --smoke /tmp/suite.
# Environment: PYTHON (default python3), WHEELS (the wheel folder, default .whl), BUDGET_S, DEADLINE_S,
# JAX_COMPILATION_CACHE_DIR (default /tmp/gpu_suite_xla_cache).
set -euo pipefail
cd "$(dirname "$0")/.."

smoke=0
if [[ "${1:-}" == "--smoke" ]]; then smoke=1; shift; fi
out=${1:-${OUT:-bench_out}}
python=${PYTHON:-python3}
wheels=${WHEELS:-.whl}
budget=${BUDGET_S:-80}
deadline=${DEADLINE_S:-240}
mkdir -p "$out"

if compgen -G "$wheels/*.whl" >/dev/null; then
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "$wheels"/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
if ! "$python" -c 'import ml_collections, tensorboardX' 2>/dev/null; then
  echo "error: $python lacks ml_collections or tensorboardX: run 'make gpu-bundle' and carry $wheels" >&2
  exit 2
fi

if (( ! smoke )) && ! "$python" -c 'import jax, sys; sys.exit(jax.default_backend() == "cpu")' 2>/dev/null; then
  echo "error: JAX in $python sees no GPU (its CPU would take hours over these cases); use --smoke on a CPU" >&2
  exit 2
fi

if (( smoke )); then
  cases=tiny:32:2
  args=(--steps=2 --warmup=1 --faces=16)
  breakdown=(--cases=tiny:32:2 "${args[@]}")
  compare=(--cases=tiny:32:2 "${args[@]}")
else
  breakdown=(--cases=liae-ud:128:32 --steps=20 --warmup=3 --faces=128)
  compare=(--cases=liae-ud:128:32 --steps=10 --warmup=2 --faces=128)
  # Priority: both archis at 128 px, then 256 px, then larger batches, then plain LIAE at 128 px
  # batch 32 (GPU_MACHINE.md's anchor network: 95 M parameters; compare its model-only step time).
  cases=liae-ud:128:32,df-ud:128:32,liae-ud:256:16,df-ud:256:16,liae-ud:128:64,liae-ud:256:32,liae:128:32
  args=(--steps=20 --warmup=3 --faces=512)
fi

{
  date -u +"%Y-%m-%dT%H:%M:%SZ"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null \
    || echo "no nvidia-smi"
  "$python" -c 'import sys, jax, flax, optax; print("python", sys.version.split()[0], "jax", jax.__version__,
                "flax", flax.__version__, "optax", optax.__version__, "devices", jax.devices())'
} >"$out/env.txt" 2>&1
cat "$out/env.txt"

export PYTHONUNBUFFERED=1
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-/tmp/gpu_suite_xla_cache}
status=0
# run NAME SECONDS FLAGS...: one benchmark program, its table tee'd to OUT_DIR/NAME.md, stopped
# after SECONDS or at the suite's deadline, whichever comes first.
run() {
  local name=$1 seconds=$2 rc=0 left=$((deadline - SECONDS))
  shift 2
  if (( left < 10 )); then
    echo "$name skipped: the suite's ${deadline} s deadline is ${left} s away" >&2
    return
  fi
  (( seconds > left )) && seconds=$left
  timeout "$seconds" "$python" -m "benchmarks.$name" "$@" --output="$out/$name.json" 2>"$out/$name.log" \
    | tee "$out/$name.md" || rc=$?
  if (( rc )); then
    echo "$name exited with status $rc; the last lines of $out/$name.log:" >&2
    tail -n 5 "$out/$name.log" >&2
    status=$rc
  fi
}
run train_throughput 130 --cases="$cases" "${args[@]}" --budget_s="$budget"
run compare_torch 60 "${compare[@]}" --torch_python="$python" --torch_modes=eager,compile
run train_breakdown 60 "${breakdown[@]}"
if (( ! smoke )); then
  run memory_savers 30 --cases=tiny:64:16 --sections=remat --steps=5 --warmup=1 --faces=32
fi
exit "$status"
