#!/usr/bin/env bash
# The product itself on one GPU machine: `hpo launch` with K workers per GPU, `hpo refit`,
# `hpo promote`, a K benchmark and a learning curve, all on Keras' JAX backend.
#
#   benchmarks/gpu/wheels.sh                       # on a machine with PyPI: .whl/ (~40 MB)
#   benchmarks/gpu/run.sh study finals pack        # on the GPU machine (no network): ~7 min on an H200
#   benchmarks/gpu/run.sh kbench                   # K = 1, 2, 4, 8, 90 s each: ~8 min
#   benchmarks/gpu/run.sh curve                    # the learning curve: ~4 min
#   benchmarks/gpu/run.sh loops                    # one champion trial, model.fit vs device loop: ~2 min
#   benchmarks/gpu/run.sh fused                    # N = 1, 2, 4, 8 champion trials in one program: ~6 min
#   benchmarks/gpu/run.sh kfuse                    # K = 1, 8 workers x N = 1, 8 trials per program (study.fuse): ~9 min
#   benchmarks/gpu/run.sh epochcalls               # per-epoch store calls, pipelined or in turn: ~1 min
#   benchmarks/gpu/run.sh own                      # search_spaces/combined.yaml at its own budget, then promote: ~9.5 min
#
# A session is lent 15 minutes of device time, start-up included, and a command runs at most 10:
# run `own` first (issue 24's headline: the study, its epochs/s and busy share at K = 8, its
# champion), then `loops epochcalls` (~3 min) if 4 minutes are left; kfuse, fused, kbench and
# curve each want a session of their own.
#
# Stages run in the order given; "a+b" runs a and b at the same time, sharing the GPU.
#
# The GPU machines lent to this project have JAX with CUDA, NumPy, pandas, h5py and matplotlib
# but no Keras, Optuna, MLflow or pydantic, and no network: wheels.sh prepares those as wheels
# in .whl/, installed here with --no-index. Everything runs in $HPO_GPU_WORK (default
# /tmp/gpu-run: the MLflow store's artifact paths are absolute, so unpack it at the same path to
# browse it) and what comes back goes to $OUT: run.log, kbench.json, curve.json and the stores
# (hpo.db, mlflow.db, mlartifacts/) as store.tgz in parts of 15 MB, loops.json, fused.json, kfuse.json and
# epoch_calls.json. HPO_GPU_SCALE=tiny
# runs the same stages at CPU-rehearsal size.
set -uo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
WORK=${HPO_GPU_WORK:-/tmp/gpu-run}
OUT=${OUT:-$WORK/out}
SCALE=${HPO_GPU_SCALE:-full}
mkdir -p "$WORK" "$OUT"
exec > >(tee -a "$OUT/run.log") 2>&1

if [ -d "$REPO/.whl" ] && ! python3 -c "import keras, optuna, mlflow, pydantic" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "$REPO"/.whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}
export KERAS_BACKEND=${KERAS_BACKEND:-jax} PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3
export HPO_STORAGE=sqlite:///$WORK/hpo.db MLFLOW_TRACKING_URI=sqlite:///$WORK/mlflow.db
# One persistent compilation cache for every worker and stage: a shape compiles once per run.
export HPO_JAX_CACHE=${HPO_JAX_CACHE:-$WORK/jax-cache}
JOBS=$(nproc)
cd "$WORK"
hpo() { python3 -m hpo "$@"; }
stamp() { echo "== $(date -u +%T) $*"; }

if [ "$SCALE" = tiny ]; then
  N=600; K=2; KS=1,2; KB_S=20; KB_EPOCHS=2; SIZES=300,600; CURVE_SAMPLES=600; CURVE_MIN=2; TEST_N=300
  LOOP_N=480; LOOP_EPOCHS=2; FUSED_N=300; FUSED_VAL=100; FUSED_EPOCHS=2; FUSED_NS=1,2
  KF_KS=1; KF_NS=1,2; EC_EPOCHS=3
  OWN=(study.n_trials=3 study.timeout_s=30 base.train.epochs=2); OWN_HARD=${HPO_OWN_HARD:-240}
  STUDY=(study.timeout_s=20 base.train.epochs=3); REFIT=(--epochs 3 --top 2 --seeds 1)
else
  N=10000; K=8; KS=1,2,4,8; KB_S=90; KB_EPOCHS=15; SIZES=5000,20000,80000; CURVE_SAMPLES=1.5e6; CURVE_MIN=25; TEST_N=5000
  LOOP_N=8000; LOOP_EPOCHS=8; FUSED_N=8000; FUSED_VAL=1000; FUSED_EPOCHS=3; FUSED_NS=1,2,4,8
  KF_KS=1,8; KF_NS=1,8; EC_EPOCHS=20
  OWN=(study.timeout_s=420); OWN_HARD=${HPO_OWN_HARD:-470}
  STUDY=(); REFIT=(--epochs 120 --top 3 --seeds 1,2)
fi
SPACE=$REPO/benchmarks/gpu/combined-gpu.yaml

stamp "setup: $(nvidia-smi -L 2>/dev/null | head -1 || echo no GPU); keras backend $KERAS_BACKEND, $JOBS cores"
python3 -c "import jax, keras, optuna, mlflow; print('jax', jax.__version__, jax.devices(), 'keras', keras.__version__, 'optuna', optuna.__version__, 'mlflow', mlflow.__version__)" || exit 1

data() {
  stamp "data: $N eRASS:8 clusters (seed 0)"
  [ -f data/results/erass8_10k.h5 ] || hpo simulate data/results/erass8_10k.h5 --n "$N" --seed 0 --preset eRASS:8 --jobs "$JOBS" --quiet
}

study() {
  data || return 1
  local space=$SPACE
  if [ ${#STUDY[@]} -gt 0 ]; then
    python3 -c "import sys, yaml; sys.path.insert(0, '$REPO/benchmarks'); from studies import derive_space; derive_space(sys.argv[1], sys.argv[2], {k: yaml.safe_load(v) for k, v in (a.split('=', 1) for a in sys.argv[3:])})" \
      "$SPACE" "$WORK/combined-gpu.yaml" "${STUDY[@]}" || return 1
    space=$WORK/combined-gpu.yaml
  fi
  stamp "study: hpo launch combined-gpu --workers-per-gpu $K"
  hpo launch "$space" --workers-per-gpu "$K" || return 1
  hpo status combined-gpu
}

finals() {
  stamp "finals: hpo refit (the best configurations again, per seed, with TTA), then hpo promote"
  rm -f refit.yaml
  hpo refit combined-gpu "${REFIT[@]}" --tta -o refit.yaml || return 1
  hpo launch refit.yaml --workers-per-gpu "$K" || return 1
  hpo status combined-gpu-refit
  # --top-k 1: the refit with the best validation value is the one scored on test, once.
  hpo promote combined-gpu-refit --model xray-cluster-mass --tta --top-k 1 || return 1
  stamp "finals done"
}

kbench() {
  data || return 1
  stamp "kbench: K = $KS, ${KB_S} s each"
  python3 "$REPO/benchmarks/gpu/kbench.py" "$SPACE" --ks "$KS" --seconds "$KB_S" --epochs "$KB_EPOCHS" \
    --work "$WORK/kbench" --out "$OUT/kbench.json"
}

curve() {
  stamp "curve: training sizes $SIZES"
  python3 "$REPO/benchmarks/gpu/learning_curve.py" --config "$REPO/benchmarks/gpu/champion.yaml" \
    --sizes "$SIZES" --samples "$CURVE_SAMPLES" --min-epochs "$CURVE_MIN" --test-n "$TEST_N" --jobs "$JOBS" --mem-fraction 0.1 \
    --work "$WORK/curve" --out "$OUT/curve.json"
}

loops() {
  # Issue 24 (a): clusters/s of one trial of the champion configuration through Keras' model.fit
  # and through the device loop (train.loop: device) with one compiled call per step and one per
  # epoch; same process, same data, alternating twice; memory grown as needed, not preallocated.
  data || return 1
  stamp "loops: the champion, $LOOP_N training clusters, $LOOP_EPOCHS epochs, model.fit vs device loop"
  XLA_PYTHON_CLIENT_PREALLOCATE=false python3 "$REPO/benchmarks/bench_device_loop.py" \
    --config "$REPO/benchmarks/gpu/champion.yaml" --data data/results/erass8_10k.h5 \
    --train-clusters "$LOOP_N" --epochs "$LOOP_EPOCHS" --repeats 2 --json "$OUT/loops.json" --no-save
}

fused() {
  # Issue 24 (b): N champion trials (own seed and learning rate each) fused into one program
  # (hpo/training/fused.py: vmap and unroll) against the same N one after another on the device
  # loop; same process, same data; memory grown as needed, not preallocated.
  data || return 1
  stamp "fused: N = $FUSED_NS champion trials, $FUSED_N training clusters, $FUSED_EPOCHS epochs, fused vs one after another"
  XLA_PYTHON_CLIENT_PREALLOCATE=false python3 "$REPO/benchmarks/bench_fused.py" \
    --data data/results/erass8_10k.h5 --train-clusters "$FUSED_N" --val-clusters "$FUSED_VAL" \
    --epochs "$FUSED_EPOCHS" --ns "$FUSED_NS" --repeats 1 --json "$OUT/fused.json" --no-save
}

kfuse() {
  # Issue 24 (b): K workers sharing the GPU, each training N trials per program (study.fuse), on
  # the champion network with its optimizer and regularisation searched (scan-gpu.yaml: one
  # shape, so every program is full); trials/h, epochs/s and the GPU's busy share per (K, N).
  data || return 1
  stamp "kfuse: K = $KF_KS workers x N = $KF_NS trials per program, ${KB_S} s each"
  python3 "$REPO/benchmarks/gpu/kbench.py" "$REPO/benchmarks/gpu/scan-gpu.yaml" --ks "$KF_KS" \
    --fuse "$KF_NS" --seconds "$KB_S" --epochs "$KB_EPOCHS" --work "$WORK/kfuse" --out "$OUT/kfuse.json"
}

own() {
  # Issue 24 (c): search_spaces/combined.yaml at its own budget (100 trials of up to 200 epochs,
  # median pruning) through hpo launch on the device path, K workers sharing the GPU, then its
  # best promoted on the test split. study.timeout_s stops starting trials after 7 min and the
  # launch is stopped (SIGTERM: the trials in flight end at an epoch end, FAIL "interrupted") at
  # OWN_HARD s, so that the whole command, promote included, ends inside 10 min: how many of the
  # 100 finished is the figure. nvidia-smi samples the GPU meanwhile; own.json has the account
  # (trials by state, epochs/s, busy share, best value), as kbench's rows.
  data || return 1
  python3 -c "import sys, yaml; sys.path.insert(0, '$REPO/benchmarks'); from studies import derive_space; derive_space(sys.argv[1], sys.argv[2], {k: yaml.safe_load(v) for k, v in (a.split('=', 1) for a in sys.argv[3:])})" \
    "$REPO/search_spaces/combined.yaml" "$WORK/combined-own.yaml" study.name=combined-own \
    data.path=data/results/erass8_10k.h5 base.train.loop=device "tracking={log_models: improving}" \
    "${OWN[@]}" || return 1
  stamp "own: hpo launch combined-own (combined.yaml, its own budget) --workers-per-gpu $K, stopped at $OWN_HARD s"
  local smi=$OUT/own-smi.csv t0 rc sampler=
  t0=$(date +%s)
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader,nounits -lms 1000 >"$smi" 2>/dev/null &
    sampler=$!
  fi
  HPO_STOP_TIMEOUT_S=30 timeout -s TERM -k 45 "$OWN_HARD" python3 -m hpo launch "$WORK/combined-own.yaml" --workers-per-gpu "$K"
  rc=$?
  [ -n "$sampler" ] && kill "$sampler" 2>/dev/null
  [ "$rc" -eq 124 ] && stamp "own: stopped at $OWN_HARD s; the trials in flight ended FAIL (interrupted)"
  [ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] && { stamp "own: hpo launch exit $rc"; return 1; }
  hpo status combined-own
  python3 "$REPO/benchmarks/gpu/kbench.py" --account combined-own --storage "$HPO_STORAGE" --smi "$smi" \
    --wall $(( $(date +%s) - t0 )) --out "$OUT/own.json"
  hpo promote combined-own --model xray-cluster-mass-own --tta --top-k 1 || return 1
  stamp "own done"
}

epochcalls() {
  # Issue 24 (3): an epoch's calls to the study and MLflow (SQLite stores), with the next epoch
  # dispatched before them (pipelined) and after them (in turn), against compute alone.
  data || return 1
  stamp "epochcalls: the champion, $LOOP_N training clusters, calls pipelined or in turn"
  XLA_PYTHON_CLIENT_PREALLOCATE=false python3 "$REPO/benchmarks/bench_epoch_calls.py" \
    --data data/results/erass8_10k.h5 --train-clusters "$LOOP_N" --val-clusters "$FUSED_VAL" \
    --epochs "$EC_EPOCHS" --network champion --repeats 2 --json "$OUT/epoch_calls.json" --no-save
}

pack() {
  stamp "pack: the stores, in parts of 15 MB"
  tar czf "$WORK/store.tgz" -C "$WORK" hpo.db mlflow.db mlartifacts refit.yaml 2>/dev/null
  ls -la "$WORK/store.tgz"
  split -b 15M -d "$WORK/store.tgz" "$OUT/store.tgz.part"
}

for stage in "$@"; do
  pids=()
  for part in ${stage//+/ }; do
    ( "$part" || stamp "stage $part FAILED (exit $?)" ) &
    pids+=($!)
  done
  wait "${pids[@]}"
done
stamp done
