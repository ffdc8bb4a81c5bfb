#!/usr/bin/env bash
# Rows of launch/rows.py on one lent GPU, side by side, across back-to-back device calls.
#
#   ROWS="medium_naive:bfloat16 medium_variational_untied:bfloat16" bash launch/gpu_rows.sh start 560
#   ROWS="imdb_lstm_naive imdb_lstm_variational_untied" bash launch/gpu_rows.sh start 300
#   ROWS="medium_variational_tied_seed1+medium_variational_tied_seed2:bfloat16" \
#     bash launch/gpu_rows.sh start 400    # two seeds as one population (--seeds_together)
#   ROWS="large_zaremba:bfloat16" bash launch/gpu_rows.sh wait 250
#
# `start` starts every row detached and watches them until they all end or DEADLINE seconds
# pass; it refuses (exit 2) while rows of an earlier call still run, since their memory share
# was set for their own call. `wait` watches the rows of an earlier call until they all end or
# its DEADLINE passes. A lease is spent best as calls whose rows end within the call: the
# machine is given back after `idle_release_s` idle (30 s on 2026-12-04), taking unfinished
# rows with it, so each next call must be the very next tool call, and a `wait` on the fresh
# machine that follows a release says so (exit 2). Each row runs
# as `python -m launch.reproduce --only ROW --gpus 0` (so with the row's own config and
# overrides, through launch/run_row.py, which records the device and wall time) in a process
# session of its own (setsid): it outlives call 1's command and goes on until the machine is
# given back. ROW:DTYPE sets train.compute_dtype for that row (default float32); one row's
# precision is fixed for its whole run. Rows a+b (named in the order of rows.py) that differ
# only in their seed train as one population, `launch.reproduce --seeds_together`, whose members
# become the rows' workdirs. The GPU's memory is shared evenly between the processes
# (XLA_PYTHON_CLIENT_MEM_FRACTION = 0.9 / number of entries in ROWS).
#
# Every 15 s, and when a row ends, its workdir without checkpoints (config.json, metrics.jsonl,
# run_info.json, results.json, mc_test.json, predictions_*.npz, the figures, train.log) is
# packed into $OUT/ROW.tgz: what the device tool brings back is each row's state at the end of
# each call (at most 8 files of 16 MiB come back: 7 rows a call, the log the eighth file).
# Checkpoints cannot come back (over 16 MiB at the large shape), so a row must end within the
# lease; one that does not comes back as its partial curve only.
#
# Carry: .whl (wheels the image lacks: ml-collections, pooch, platformdirs, tensorboardX) and
# .gpu (data/: ptb, imdb, scaledata, since ../shared does not travel, found via VDRNN_DATA;
# orbax/: orbax-checkpoint 0.12.8, used only if a row fails before its first epoch with the
# image's orbax). Workdirs on /dev/shm (epoch-end checkpoints are written synchronously).
# Back on the developer machine, per row: move any CPU workdir of the same row aside, then
#   tar -xzf <files_at>/ROW.tgz -C <workdir_root> && python -m launch.reproduce --report ...
#
# Measured on an NVIDIA H200 (2026-12-04): PTB large 8.1 s an epoch alone (114k tokens/s);
# medium_naive and medium_variational_untied side by side 10 s and 6 s an epoch, 7 and 9 min
# with the 1000-sample MC test (deterministic ops);
# two PTB medium rows side by side 8.4 s an epoch each; the 1000-sample large MC test about 2 min;
# large beside two mediums 26 s and 13 s an epoch: the GPU is shared by time-slicing, so rows
# side by side take as long as one after another (plan a lease as their sum, ~850 s of work).
set -u
MODE=${1:?start or wait}
DEADLINE=${2:?seconds}
ROWS=${ROWS:?ROWS="row[:dtype] ..."}
FLAGS=${REPRODUCE_FLAGS:-}  # more flags of launch.reproduce (the tests: --module fake_train)
OUT="${OUT:-$(mktemp -d -t gpu_rows.XXXXXX)}"
W=${GPU_ROWS_DIR:-/dev/shm/vdrnn}  # the workdirs and the wheels' site
[ -n "${GPU_ROWS_DIR:-}" ] || { touch /dev/shm/.probe 2>/dev/null || W=/tmp/vdrnn; }
mkdir -p "$W" "$OUT"
START=$SECONDS
exec > >(tee -a "$OUT/gpu_rows_$MODE.log") 2>&1
set -- $ROWS
N=$#  # processes: a row, or rows a+b trained together as one population
files=0  # tarballs: one per row, and a population's own
for s in "$@"; do
  e=${s%%:*}; f=${e//+/}; k=$(( ${#e} - ${#f} + 1 ))  # rows in the entry
  (( files += k > 1 ? k + 1 : 1 ))
done
if (( files > 7 )); then  # the device tool brings back 8 files: a tarball per row and the log
  echo "error: $files tarballs; at most 7 a call (the device tool brings back at most 8 files)"
  exit 2
fi
export PYTHONUNBUFFERED=1 JAX_PLATFORMS=${JAX_PLATFORMS:-cuda} VDRNN_DATA="$PWD/.gpu/data"
# One seed, one result: without this, XLA:GPU's scatter-add (the embedding's gradient) sums in
# whatever order its atomics land, and two leases of the same medium row drifted apart by up to
# 3 perplexity points in epoch 1 (2026-12-04). On the H200 it cost nothing measurable (medium naive
# alone, bfloat16: 5 s an epoch with and without it; two runs with it bitwise equal, 2026-12-04).
[ "${GPU_DETERMINISTIC:-1}" = 1 ] && export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_deterministic_ops=true"
export XLA_PYTHON_CLIENT_MEM_FRACTION=$(awk -v n="$N" 'BEGIN { printf "%.3f", 0.9 / n }')
SITE=$W/site
if [ ! -d "$SITE" ] && compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" \
    .whl/*.whl || echo "wheel install failed"
fi
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"

pack_dir() {  # $1: a workdir under $W, without its checkpoints, into $OUT/$2.tgz
  [ -d "$W/$1" ] && tar -czf "$OUT/$2.tgz.tmp" --exclude=checkpoints -C "$W" "$1" 2>/dev/null &&
    mv "$OUT/$2.tgz.tmp" "$OUT/$2.tgz"
}

pack() {  # $1: a row, or rows a+b: each row's workdir, and a population's own as a_population
  local r
  for r in ${1//+/ }; do pack_dir "$r" "$r"; done
  if [[ $1 == *+* ]]; then pack_dir "$1" "${1%%+*}_population"; fi
}

launch() {  # $1: a row, or rows a+b that differ only in their seed (--seeds_together); $2: dtype
  local together=""
  [[ $1 == *+* ]] && together=--seeds_together
  setsid nohup python3 -m launch.reproduce --only "${1//+/,}" $together --workdir_root "$W" \
    --gpus 0 $FLAGS \
    --override train.progress=False --override train.checkpoint_every_steps=0 \
    --override "train.compute_dtype=$2" >> "$W/$1.log" 2>&1 < /dev/null &
  echo $! > "$W/$1.pid"
  echo "started $1 ($2) pid $(cat "$W/$1.pid") at $(date -u +%FT%TZ)"
}

running() { kill -0 "$(cat "$W/$1.pid" 2>/dev/null)" 2>/dev/null; }
finished() {  # $1: a row, or rows a+b: each row's workdir has its results.json
  local r
  for r in ${1//+/ }; do [ -f "$W/$r/results.json" ] || return 1; done
}
name() { echo "${1%%:*}"; }
dtype() { [[ $1 == *:* ]] && echo "${1##*:}" || echo float32; }
any_running() { for s in "$@"; do running "$(name "$s")" && return 0; done; return 1; }

if [ "$MODE" = start ]; then
  names=$(for s in "$@"; do name "$s"; done | paste -sd, - | tr + ,)
  python3 -m launch.reproduce --dry_run --only "$names" --workdir_root "$W" > /dev/null || exit 2
  for s in "$@"; do  # rows trained together: seeds of one row, named in the order of rows.py
    e=$(name "$s"); [[ $e == *+* ]] || continue
    got=$(python3 -m launch.reproduce --dry_run --seeds_together --only "${e//+/,}" \
          --workdir_root "$W" | head -1 | cut -d' ' -f1) || exit 2
    [ "$got" = "$e" ] || { echo "error: $e: name its rows as rows.py orders them: $got"; exit 2; }
  done
  busy=$(for f in "$W"/*.pid; do [ -f "$f" ] && r=$(basename "$f" .pid) && running "$r" && echo "$r"
         done | paste -sd' ' -)
  if [ -n "$busy" ]; then  # their memory share was set for their own call: more would not fit
    echo "error: still running on this machine: $busy; \`wait\` for them before starting more rows"
    exit 2
  fi
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  probe="import jax, orbax.checkpoint as o, flax, optax; print('jax', jax.__version__, 'orbax', getattr(o, '__version__', '?'), 'flax', flax.__version__, 'optax', optax.__version__, jax.devices(), jax.jit(lambda x: x + 1)(jax.numpy.ones(2)))"
  if ! python3 -c "$probe"; then  # an XLA without the determinism flag: run without it, say so
    echo "warning: this XLA refuses XLA_FLAGS=$XLA_FLAGS; the rows run without it (not bitwise reproducible)"
    export XLA_FLAGS=${XLA_FLAGS/--xla_gpu_deterministic_ops=true/}
    python3 -c "$probe"
  fi
  for s in "$@"; do launch "$(name "$s")" "$(dtype "$s")"; done
  retried=0
else  # wait: the rows must have been started on this very machine by call 1
  lost=$(for s in "$@"; do r=$(name "$s"); [ -f "$W/$r.pid" ] || echo "$r"; done | paste -sd' ' -)
  if [ -n "$lost" ]; then
    echo "error: not started on this machine: $lost (a fresh machine: the one call 1 used was" \
      "given back when idle; make call 2 the very next tool call, within idle_release_s)"
    exit 2
  fi
fi
while any_running "$@" && (( SECONDS - START < DEADLINE )); do
  sleep 5
  if [ "$MODE" = start ] && (( retried == 0 )); then
    for s in "$@"; do  # a row that stopped before its first epoch: once more with orbax 0.12.8
      r=$(name "$s")
      if ! running "$r" && [ ! -f "$W/$r/results.json" ] &&
          ! grep -q '"epoch"' "$W/$r/metrics.jsonl" 2>/dev/null; then
        echo "=== $r stopped before its first epoch:"; tail -30 "$W/$r.log"
        echo "=== every stopped row again with orbax-checkpoint 0.12.8"
        python3 -m pip install -q --no-index --no-deps --no-compile --target "$SITE" .gpu/orbax/*.whl
        retried=1
        for t in "$@"; do
          u=$(name "$t")
          running "$u" || { rm -rf "$W/$u/checkpoints"; launch "$u" "$(dtype "$t")"; }
        done
        break
      fi
    done
  fi
  if (( (SECONDS - START) % 15 < 5 )); then for s in "$@"; do pack "$(name "$s")"; done; fi
done
for s in "$@"; do
  r=$(name "$s"); pack "$r"
  if running "$r"; then echo "=== $r: still running after $((SECONDS - START)) s"
  elif finished "$r"; then echo "=== $r: ended"
  else echo "=== $r: stopped without results.json:"; tail -5 "$W/$r.log" 2>/dev/null; fi
  grep -h '"epoch"' "$W/$r/metrics.jsonl" 2>/dev/null | tail -2 | cut -c1-300
  tail -3 "$W/$r/train.log" 2>/dev/null
done
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv 2>/dev/null
ls -la "$OUT"
