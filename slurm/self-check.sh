#!/usr/bin/env bash
# Self-check on a real cluster: submit one short sslprune stage, preempt it with USR2 (what SLURM
# sends before the time limit, and on preemption with preempt_send_user_signal), and verify that it
# checkpointed, requeued itself, resumed from its checkpoint and finished.
#
#   bash slurm/self-check.sh [extra sslprune overrides, e.g. launcher.partition=learnfair launcher.account=me]
#
# Uses a temporary store (kept on failure, printed); needs about a minute of one CPU plus the
# cluster's requeue delay. Exit 0 = everything worked.
set -euo pipefail
STORE="${SSLPRUNE_CHECK_STORE:-$(mktemp -d "${TMPDIR:-/tmp}/sslprune-self-check.XXXXXX")}"
TIMEOUT="${SSLPRUNE_CHECK_TIMEOUT:-600}"
ARGS=(store="$STORE" experiment=demo seeds=[0] signal=labels prune.levels=0 '~signals.rotnet' probe.signals=[]
      retrain.schemes=[] model.width=8 signals.labels.optim.batch_size=32 signals.labels.optim.epochs=25
      signals.labels.optim.milestones=[] run.threads=1 run.log_every=10 run.device=cpu
      launcher=slurm launcher.cpus_per_task=1 launcher.time_min=30 launcher.signal_delay_s=60 "$@")
fail() { echo "self-check FAILED: $*"; echo "store kept: $STORE"; exit 1; }
step() { python - "$1" <<'PY'
import json, sys
try:
    print(json.load(open(sys.argv[1]))["step"])
except Exception:
    print(0)
PY
}

echo "[self-check] submitting one stage into $STORE"
sslprune-run "${ARGS[@]}"
DIR=$(dirname "$(ls "$STORE"/imp/*/seed_0/level_0/job.json)")
JOB=$(python -c "import json,sys; print(json.load(open(sys.argv[1]))['job_id'])" "$DIR/job.json")
echo "[self-check] job $JOB, stage $DIR"
start=$SECONDS
while [ "$(step "$DIR/progress.json")" -lt 200 ]; do
    [ $((SECONDS - start)) -lt "$TIMEOUT" ] || fail "the job did not reach step 200 within ${TIMEOUT}s (pending? see squeue -j $JOB)"
    [ -f "$DIR/result.json" ] && fail "the job finished before it could be preempted"
    sleep 0.5
done
echo "[self-check] at step $(step "$DIR/progress.json"): scancel --signal=USR2 $JOB"
scancel --signal=USR2 "$JOB"
while [ ! -f "$DIR/result.json" ]; do
    [ $((SECONDS - start)) -lt "$TIMEOUT" ] || fail "the job did not finish within ${TIMEOUT}s"
    sleep 1
done
LOG=$(ls "$STORE"/slurm/"$JOB"/*_log.out | head -1)
grep -q "resumed from .*checkpoint.pt at step" "$LOG" || fail "no 'resumed from' line in $LOG"
sleep 2  # accounting lags a little
sacct -D -X -n -P -o State -j "$JOB" | grep -q REQUEUED || fail "sacct -D shows no REQUEUED record for $JOB"
grep "resumed from" "$LOG"
sslprune-status "${ARGS[@]}"
echo "[self-check] OK: job $JOB checkpointed on USR2, requeued itself, resumed and finished"
[ -n "${SSLPRUNE_CHECK_STORE:-}" ] || rm -rf "$STORE"
