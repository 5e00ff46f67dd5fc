# Sourced by the sbatch scripts (run, sweep, scaling): environment, launcher, signal forwarding, requeue.
#
# Signals. The scripts ask for `--signal=B:USR1@300`: Slurm's warning goes to this batch shell,
# which forwards it to the launcher it waits on (srun relays it to its tasks, mpirun/mpiexec to
# the ranks it started), so the warning reaches the ranks with every launcher, also where the
# ranks are started by the batch shell itself. The ranks stop after the current round with their
# checkpoint and exit 3; the job is requeued only when the stop came from that warning (USR1 to
# this shell). A SIGTERM to this shell (the time limit without a warning, `scancel --batch
# --signal=TERM`) is forwarded too and stops the run without a requeue; a SIGTERM or USR1 sent to
# the ranks alone (`scancel --signal=...` without --batch) also stops without a requeue.

# From the moment this file is sourced the batch shell never dies of these signals. One that
# arrives before the launcher starts means nothing is launched: the warning requeues the job, a
# stop ends it (exit 143, as a terminated shell); one after the run ended changes nothing (the
# job keeps the run's exit code: COMPLETED after a complete run).
pending=""
trap 'pending=USR1' USR1
trap 'pending=TERM' TERM INT

ssfl_env() {  # activate the virtual environment; one clear line if ssfl_mpi cannot be imported
  SSFL_VENV="${SSFL_VENV:-$PWD/.venv}"
  # shellcheck disable=SC1091
  [ -f "$SSFL_VENV/bin/activate" ] && source "$SSFL_VENV/bin/activate"
  if ! python -c 'import ssfl_mpi' 2>/dev/null; then
    echo "ssfl-mpi: error: cannot import ssfl_mpi with $(command -v python || echo 'no python'): set SSFL_VENV to the virtual environment where it is installed (now '$SSFL_VENV')" >&2
    exit 2
  fi
  threads="${SLURM_CPUS_PER_TASK:-1}"
  export OMP_NUM_THREADS="$threads" MKL_NUM_THREADS="$threads"
  ntasks="${SLURM_NTASKS:-3}"
}

ssfl_launcher() {  # sets launch=(...) from SSFL_LAUNCHER
  case "${SSFL_LAUNCHER:-srun}" in
    srun)   launch=(srun ${SSFL_SRUN_MPI:+--mpi="$SSFL_SRUN_MPI"} --cpus-per-task="$threads") ;;
    mpirun) launch=(mpirun -n "$ntasks") ;;
    *) echo "ssfl-mpi: error: SSFL_LAUNCHER must be srun or mpirun, got '${SSFL_LAUNCHER}'" >&2; exit 2 ;;
  esac
}

ssfl_run() {  # ssfl_run CMD...: run it in the background, forward USR1/TERM to it; sets rc
  stop_signal=""
  if [ "$pending" = USR1 ]; then
    echo "ssfl-mpi: the warning signal came before the run started: not launched"
    stop_signal=USR1 rc=3
    return
  elif [ -n "$pending" ]; then
    echo "ssfl-mpi: stopped by SIG$pending before the run started: not launched"
    exit 143
  fi
  "$@" &
  local pid=$!
  trap 'stop_signal=USR1; echo "ssfl-mpi: warning signal: the ranks stop after this round"; kill -USR1 '"$pid"' 2>/dev/null' USR1
  trap 'stop_signal=TERM; kill -TERM '"$pid"' 2>/dev/null' TERM INT
  while :; do
    rc=0
    wait "$pid" || rc=$?
    if ! kill -0 "$pid" 2>/dev/null; then  # gone: one more wait reports its status if still unreaped
      local again=0
      wait "$pid" 2>/dev/null || again=$?
      [ "$again" -ne 127 ] && rc=$again
      break
    fi  # else a trapped signal interrupted the wait: wait again
  done
  trap '' USR1 TERM INT  # the run is over: a late warning or stop changes nothing
}

ssfl_finish() {  # requeue on a warning-signal stop, else exit with the run's code
  if [ "$rc" -eq 3 ] && [ "$stop_signal" = USR1 ] && [ "${SSFL_REQUEUE:-1}" != 0 ] && [ -n "${SLURM_JOB_ID:-}" ]; then
    echo "ssfl-mpi: stopped at a round boundary with its checkpoint; requeueing job $SLURM_JOB_ID"
    scontrol requeue "$SLURM_JOB_ID"  # an array task has its own job id
    exit 0
  fi
  if [ "$rc" -eq 3 ]; then
    echo "ssfl-mpi: stopped at a round boundary (not by the time-limit warning): not requeued; resubmit to continue"
  fi
  exit "$rc"
}
