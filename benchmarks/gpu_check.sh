#!/usr/bin/env bash
# The prepared GPU check of issue #3: one call on a device machine, under 7 minutes after its start.
#   bash benchmarks/gpu_check.sh [OUT_DIR]     (from the repository root; OUT_DIR: default $OUT)
# Paper preset, 150 steps: each engine formulation against the per-image loop and the shared-weight
# ceiling in float32, then vmap_matmul in bfloat16. Each benchmark has its own time limit, so that
# one slow formulation (grouped-conv backward passes, jax #13800) cannot take the others' time.
# PRESET, STEPS, IMAGES override the sizes (PRESET=tiny STEPS=2 IMAGES=4 tries it on a CPU).
set -uo pipefail
out=${1:-${OUT:-/tmp/gpu_check}}
mkdir -p "$out"
preset=${PRESET:-paper} steps=${STEPS:-150} images=${IMAGES:-32}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
  python3 -c 'import jax, flax, optax; print("jax", jax.__version__, "flax", flax.__version__,
    "optax", optax.__version__, jax.devices())' 2>&1
} > "$out/card.txt"
cat "$out/card.txt"

bench() {  # name, time limit in s, throughput.py arguments
  local name=$1 limit=$2
  shift 2
  timeout "$limit" python3 benchmarks/throughput.py --preset "$preset" --steps "$steps" \
    --images "$images" --rounds 1 --no-one-device "$@" > "$out/$name.json" 2> "$out/$name.log"
  local rc=$?
  echo "== $name: exit $rc$( ((rc == 124)) && echo ", stopped at its ${limit} s")"
  grep -E '^(\||round )' "$out/$name.log"
}
bench f32_vmap_matmul_loop 180 --formulations vmap_matmul,loop
bench f32_vmap_conv 120 --formulations vmap_conv --ceiling-impls lax
bench bf16_vmap_matmul 100 --formulations vmap_matmul --ceiling-impls lax --compute-dtype bfloat16
