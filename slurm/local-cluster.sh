#!/usr/bin/env bash
# A private single-node Slurm (munge + slurmctld + slurmd from the distribution's packages) for the
# tests and for trying the scripts on one machine, as root:
#
#   slurm/local-cluster.sh install        # apt-get install slurm-wlm munge (Debian/Ubuntu)
#   slurm/local-cluster.sh up [DIR]       # start it in DIR (default /tmp/ssfl-slurm); prints the env to use
#   eval "$(slurm/local-cluster.sh env [DIR])"   # SLURM_CONF for sbatch/squeue/scontrol in this shell
#   slurm/local-cluster.sh down [DIR]     # stop exactly the daemons it started (by their pid files)
#
# Everything lives in DIR: keys, sockets, config, state, logs. Nothing else on the machine changes
# except the munge socket directory /run/munge that munged insists on.
set -euo pipefail

DIR="${2:-${SSFL_SLURM_DIR:-/tmp/ssfl-slurm}}"
CONF="$DIR/slurm.conf"
SOCKET="$DIR/munge/munge.socket"

die() { echo "local-cluster: $*" >&2; exit 1; }

install() {
  command -v apt-get >/dev/null || die "needs apt-get (Debian/Ubuntu); install slurm-wlm and munge yourself"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
}

write_conf() {
  local host cpus
  host="$(hostname -s)"
  cpus="$(nproc)"
  cat > "$CONF" <<EOF
ClusterName=ssfl-local
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$SOCKET,cred_expire=10
MpiDefault=pmi2
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MailProg=/bin/true
ReturnToService=2
KillWait=30
MinJobAge=3600
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/jobcomp.log
NodeName=$host CPUs=$cpus State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
EOF
}

up() {
  [[ $EUID -eq 0 ]] || die "run as root (slurmd and munged are started as root)"
  command -v slurmctld >/dev/null && command -v munged >/dev/null \
    || die "slurm-wlm and munge are not installed: run '$0 install' first"
  if [[ -f "$DIR/slurmctld.pid" ]] && kill -0 "$(cat "$DIR/slurmctld.pid")" 2>/dev/null; then
    die "a cluster already runs in $DIR: '$0 down $DIR' first"
  fi
  mkdir -p "$DIR"/{munge,state,spool}
  chmod 700 "$DIR/munge"
  mkdir -p /run/munge && chmod 711 /run/munge
  [[ -f "$DIR/munge/munge.key" ]] || mungekey -c -k "$DIR/munge/munge.key" >/dev/null 2>&1 \
    || dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
  chmod 600 "$DIR/munge/munge.key"
  munged --force -S "$SOCKET" --key-file "$DIR/munge/munge.key" --pid-file "$DIR/munge/munged.pid" \
    --log-file "$DIR/munge/munged.log" --seed-file "$DIR/munge/munged.seed"
  write_conf
  slurmctld -c -f "$CONF"
  slurmd -f "$CONF"
  for _ in $(seq 1 100); do
    if [[ "$(SLURM_CONF="$CONF" sinfo -h -o %T 2>/dev/null | head -1)" == idle* ]]; then
      echo "export SLURM_CONF=$CONF"
      return 0
    fi
    sleep 0.1
  done
  down || true
  die "slurmd did not come up within 10 s (logs in $DIR)"
}

down() {
  local pidfile pid
  for pidfile in "$DIR/slurmd.pid" "$DIR/slurmctld.pid" "$DIR/munge/munged.pid"; do
    [[ -f "$pidfile" ]] || continue
    pid="$(cat "$pidfile")"
    if kill -0 "$pid" 2>/dev/null; then
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
  done
}

case "${1:-}" in
  install) install ;;
  up) up ;;
  down) down ;;
  env) echo "export SLURM_CONF=$CONF" ;;
  *) die "usage: $0 install|up|down|env [DIR]" ;;
esac
