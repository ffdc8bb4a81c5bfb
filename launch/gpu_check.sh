#!/usr/bin/env bash
# GPU check for issue 14, for ONE device call of at most 8 minutes (nothing is fetched there).
#
# What it does, in order of priority (each step has its own time budget; a step that fails or
# runs out of time is logged and the next one runs; the whole script stops itself at 470 s):
#   1. the Pallas kernel tests natively (JAX_PLATFORMS=cuda): tests/test_pallas_lstm.py, and
#      tests/test_population_hlo.py (batched matmuls in the GPU's compiled HLO), and the draft
#      PyTorch peers (tests/test_peers.py, on CUDA);
#   2. launch/gpu_lstm.py --sections=layer: one layer's recurrence fwd+bwd, scan vs Pallas,
#      medium and large, tied/untied, float32 (TF32) and bfloat16, with the max differences;
#   3. launch/gpu_lstm.py --sections=step: the whole training step, lax.scan unroll 1, 5,
#      35 (= T, the full unroll) and the Pallas kernel, large then medium, untied;
#   4. launch/gpu_lstm.py --sections=peers: vdrnn (scan, Pallas) vs PyTorch nn.LSTM (cuDNN)
#      and AWD-LSTM, medium untied, interleaved rounds;
#   5. python -m launch.bench --only population,mc: population K = 1, 4, 16 and MC S = 100, 1000;
#   6. XLA command buffers (CUDA graphs): the large untied bf16 step (unroll 1) with command
#      buffers off, and with WHILE/CONDITIONAL added (one process per XLA_FLAGS setting);
#   7. launch/gpu_lstm.py --sections=tiles: the kernel's block_h / num_warps.
# Results under $OUT (the device tool's output folder; elsewhere a new mktemp -d directory,
# printed at the start): gpu_check.log (everything printed), layer.json, step.json (command
# buffer arms tagged), peers.json, bench.json.
#
# How to call it (from the repo root on the developer machine):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
#     --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     --platform manylinux1_x86_64 -d .whl ml-collections==1.1.0
#   then the device tool's run with carry [".whl"], timeout_s 540, command:
#   bash launch/gpu_check.sh
#
# JAX on the device. The image's python3 (/opt/torch/.venv) has jax, jaxlib, jax-cuda13-plugin
# and jax-cuda13-pjrt 0.11.2 (device/KINDS.md), PyTorch 2.11 (CUDA 13), Triton, pytest, flax,
# optax, orbax, absl; ml-collections is the one package vdrnn needs that it lacks. This repo is
# developed on jax 0.10.2. Carrying jax 0.10.2 is not possible in one call: the carried tree is
# limited to 64 MiB and jaxlib 0.10.2 alone is about 85 MB (the cp311 wheel is 85,448,560
# bytes), the pjrt plugin is larger still, and jax[cuda12] would also need the CUDA 12 nvidia-*
# wheels (cuDNN, cuBLAS: hundreds of MB) where the image has CUDA 13's. The lines that would
# fetch them, for the record (they do not fit the 64 MiB limit):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux2014_x86_64 -d .whl \
#     jax==0.10.2 jaxlib==0.10.2 jax-cuda13-plugin==0.10.2 jax-cuda13-pjrt==0.10.2
#   (jax[cuda12]: jax-cuda12-plugin==0.10.2 jax-cuda12-pjrt==0.10.2 plus nvidia-cublas-cu12,
#    nvidia-cuda-cupti-cu12, nvidia-cuda-nvcc-cu12, nvidia-cuda-runtime-cu12, nvidia-cudnn-cu12,
#    nvidia-cufft-cu12, nvidia-cusolver-cu12, nvidia-cusparse-cu12, nvidia-nccl-cu12,
#    nvidia-nvjitlink-cu12 at the versions jax-cuda12-plugin 0.10.2's metadata pins)
# So this script runs on the image's JAX 0.11.2 and prints the versions it used; the numbers
# are that JAX's. Any carried wheel in .whl/ is installed first into a scratch directory
# (mktemp -d) put on PYTHONPATH (a jax wheel put there would take precedence over the image's).
#
# Check here without a GPU: bash -n launch/gpu_check.sh

set -u -o pipefail
OUT="${OUT:-$(mktemp -d -t gpu_check.XXXXXX)}"
mkdir -p "$OUT"
echo "results in $OUT"
exec > >(tee "$OUT/gpu_check.log") 2>&1
START=$SECONDS
DEADLINE=470  # seconds: leaves the call's remaining time for the transfers back
export PYTHONUNBUFFERED=1 JAX_PLATFORMS=cuda XLA_PYTHON_CLIENT_MEM_FRACTION=0.6
PY=python3

left() { echo $((DEADLINE - (SECONDS - START))); }

# step NAME BUDGET_SECONDS COMMAND...: runs COMMAND with timeout min(budget, time left - 5).
step() {
  local name=$1 budget=$2
  shift 2
  local t=$(( $(left) - 5 ))
  (( t > budget )) && t=$budget
  if (( t < 15 )); then
    echo "=== $name: skipped, $(left) s left"
    return
  fi
  echo "=== $name (budget ${t} s, $(left) s left) ==="
  local t0=$SECONDS
  timeout --kill-after=5 "$t" "$@"
  local rc=$?
  echo
  echo "=== $name: exit $rc after $((SECONDS - t0)) s"
}

echo "=== setup"
if compgen -G ".whl/*.whl" > /dev/null; then
  SITE="$(mktemp -d -t gpu_check_site.XXXXXX)"
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" .whl/*.whl && export PYTHONPATH="$SITE"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
$PY - <<'EOF'
import importlib
for name in ("jax", "jaxlib", "jax_cuda13_plugin", "torch", "triton", "ml_collections", "pytest"):
  try:
    m = importlib.import_module(name)
    print(name, getattr(m, "__version__", "?"))
  except Exception as e:  # noqa: BLE001
    print(name, "MISSING", type(e).__name__, e)
import jax
print("devices", jax.devices())
EOF

step "kernel tests (native)" 110 $PY -m pytest -q -p no:cacheprovider -o addopts="" -rA \
  tests/test_pallas_lstm.py tests/test_population_hlo.py tests/test_peers.py

BENCH="$PY -m launch.gpu_lstm --reps=3 --steps=5"
step "layer: scan vs pallas" 80 $BENCH --sections=layer --json="$OUT/layer.json"
step "step: unroll 1/5/35 and pallas, large" 75 $BENCH --sections=step --shapes=large \
  --json="$OUT/step.json" --append
step "step: unroll 1 and pallas, medium" 35 $BENCH --sections=step --shapes=medium --unrolls=1 \
  --json="$OUT/step.json" --append
step "peers: cuDNN, AWD-LSTM vs vdrnn, medium" 60 $BENCH --sections=peers --rounds=5 \
  --json="$OUT/peers.json"
step "bench: population, mc" 70 $PY -m launch.bench --only population,mc --json "$OUT/bench.json"
CB_OFF="--xla_gpu_enable_command_buffer="
CB_WHILE="--xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN"
CB_WHILE="$CB_WHILE,CONDITIONAL,WHILE --xla_gpu_graph_min_graph_size=1"
step "command buffers off" 25 env XLA_FLAGS="$CB_OFF" $BENCH --sections=step --shapes=large \
  --dtypes=bfloat16 --unrolls=1 --tag=command_buffers_off --json="$OUT/step.json" --append
step "command buffers with WHILE" 25 env XLA_FLAGS="$CB_WHILE" $BENCH --sections=step \
  --shapes=large --dtypes=bfloat16 --unrolls=1 --tag=command_buffers_while \
  --json="$OUT/step.json" --append
step "tiles: block_h x num_warps" 40 $BENCH --sections=tiles --json="$OUT/layer.json" --append

echo "=== done in $((SECONDS - START)) s"
ls -la "$OUT"
