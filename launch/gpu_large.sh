#!/usr/bin/env bash
# One PTB row on a lent GPU across two back-to-back device calls (issue 26, item 5).
#
#   bash launch/gpu_large.sh start 585   # call 1: start the row detached, watch it 585 s
#   bash launch/gpu_large.sh wait 170    # call 2 (within the machine's 30 s warm window):
#                                        # watch it until it ends or 170 s have passed
#
# The row runs as `python -m launch.run_row --config $CONFIG --workdir $W/$ROW $EXTRA` in a
# process session of its own (setsid), so it outlives call 1's command and goes on until the
# machine is given back. Every 15 s, and when the run ends, the workdir without its
# checkpoints (config.json, metrics.jsonl, run_info.json, results.json, mc_test.json, the
# figures, the log) is packed into $OUT/$ROW.tgz: what comes back from the device tool is
# the state of the run at the end of each call. The checkpoints (about 270 MB at the large
# shape) cannot come back (16 MiB a file), so a row must finish within the lease.
#
# Carry: .whl (ml-collections, pooch, platformdirs, tensorboardX: the image lacks them) and
# .gpu (data/ptb: ../shared does not travel; orbax/: orbax-checkpoint 0.12.8, used only if
# the run fails to start with the image's orbax). The workdir is on /dev/shm (the epoch-end
# checkpoints are written synchronously).
#
# Environment (defaults: the released large recipe, bfloat16 matmul operands):
#   ROW=large_variational_untied CONFIG=configs/ptb_large.py:untied
#   EXTRA="--config.train.compute_dtype=bfloat16 ..."
set -u
MODE=${1:?start or wait}
DEADLINE=${2:?seconds}
OUT="${OUT:-$(mktemp -d -t gpu_large.XXXXXX)}"
ROW=${ROW:-large_variational_untied}
CONFIG=${CONFIG:-configs/ptb_large.py:untied}
EXTRA=${EXTRA:-"--config.train.compute_dtype=bfloat16"}
W=/dev/shm/vdrnn
[ -d /dev/shm ] && touch /dev/shm/.probe 2>/dev/null || W=/tmp/vdrnn
WD=$W/$ROW
mkdir -p "$WD" "$OUT"
START=$SECONDS
exec > >(tee -a "$OUT/gpu_large_$MODE.log") 2>&1
export PYTHONUNBUFFERED=1 JAX_PLATFORMS=${JAX_PLATFORMS:-cuda} XLA_PYTHON_CLIENT_MEM_FRACTION=0.85
SITE=/tmp/vdrnn_site
if [ ! -d "$SITE" ] && compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" \
    .whl/*.whl || echo "wheel install failed"
fi
export PYTHONPATH="$SITE:$PWD"

pack() {  # the workdir without checkpoints, into $OUT
  tar -czf "$OUT/$ROW.tgz.tmp" --exclude=checkpoints -C "$W" "$ROW" 2>/dev/null &&
    mv "$OUT/$ROW.tgz.tmp" "$OUT/$ROW.tgz"
}

launch() {
  setsid nohup python3 -m launch.run_row --config "$CONFIG" --workdir "$WD" \
    --config.data_dir=.gpu/data --config.train.progress=False \
    --config.train.checkpoint_every_steps=0 $EXTRA >> "$WD/train.log" 2>&1 < /dev/null &
  echo $! > "$W/$ROW.pid"
  echo "started pid $(cat "$W/$ROW.pid") at $(date -u +%FT%TZ): $CONFIG $EXTRA"
}

running() { kill -0 "$(cat "$W/$ROW.pid" 2>/dev/null)" 2>/dev/null; }

if [ "$MODE" = start ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import jax, orbax.checkpoint as o, flax, optax; print('jax', jax.__version__, 'orbax', getattr(o, '__version__', '?'), 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())"
  launch
  retried=0
  while (( SECONDS - START < DEADLINE )); do
    sleep 5
    if ! running; then
      if (( retried == 0 )) && [ ! -f "$WD/results.json" ] && ! grep -q '"epoch"' "$WD/metrics.jsonl" 2>/dev/null; then
        echo "=== the run stopped before its first epoch; its log:"; tail -30 "$WD/train.log"
        echo "=== again with orbax-checkpoint 0.12.8"
        python3 -m pip install -q --no-index --no-deps --no-compile --target "$SITE" .gpu/orbax/*.whl
        rm -rf "$WD/checkpoints"; retried=1; launch; continue
      fi
      break
    fi
    (( (SECONDS - START) % 15 < 5 )) && pack
  done
else
  while running && (( SECONDS - START < DEADLINE )); do
    sleep 5
    (( (SECONDS - START) % 15 < 5 )) && pack
  done
fi
pack
running && echo "=== still running after $((SECONDS - START)) s" || echo "=== the run has ended"
grep valid_ppl "$WD/metrics.jsonl" 2>/dev/null | tail -3 | cut -c1-400
tail -5 "$WD/train.log"
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv 2>/dev/null
ls -la "$OUT"
