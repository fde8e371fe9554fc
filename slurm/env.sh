# Sourced by every sslprune job before Python starts (submitted through launcher=slurm).
# Site-specific lines (module load, conda activate, ...) go in launcher.setup or in the file
# named by $SSLPRUNE_JOB_ENV, sourced at the end.

# One math-library thread per CPU SLURM gave this task, never more (oversubscription is slow).
export OMP_NUM_THREADS="${SLURM_CPUS_PER_TASK:-1}"
export MKL_NUM_THREADS="$OMP_NUM_THREADS"
export PYTHONUNBUFFERED=1
# Fail fast instead of hanging when a rank of a multi-task job dies.
export TORCH_NCCL_ASYNC_ERROR_HANDLING=1
# submitit's preemption signal (SLURM sends it --signal=USR2@<launcher.signal_delay_s> before the limit).
export SUBMITIT_PREEMPT_SIGNAL="${SUBMITIT_PREEMPT_SIGNAL:-USR2}"
if [ -n "${SSLPRUNE_JOB_ENV:-}" ] && [ -f "$SSLPRUNE_JOB_ENV" ]; then
    # shellcheck disable=SC1090
    source "$SSLPRUNE_JOB_ENV"
fi
