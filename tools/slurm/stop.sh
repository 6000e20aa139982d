#!/usr/bin/env bash
# Stop the local Slurm cluster that tools/slurm/start.sh started: cancel its jobs, then end slurmd, slurmctld
# and (only if start.sh started it) munged, each by the pid file in $SLURM_BASE/run (no pkill), and remove the
# /etc/slurm/slurm.conf link to $SLURM_BASE/etc/slurm.conf so that clients no longer see a cluster.
#
#   tools/slurm/stop.sh            stop; keep $SLURM_BASE/log for reading
#   tools/slurm/stop.sh --purge    stop and delete $SLURM_BASE
#
# Safe to run when nothing runs (exits 0), and from a trap.
set -uo pipefail

BASE=${SLURM_BASE:-${TMPDIR:-/tmp}/cxlspeaks-slurm}
log() { echo "[slurm stop] $*"; }
alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

if alive "$BASE/run/slurmctld.pid"; then
  export SLURM_CONF="$BASE/etc/slurm.conf"
  # cancel what still runs (the slurmstepd of a running job outlives slurmd otherwise), wait a little
  scancel --user="$(id -un)" 2>/dev/null || true
  for _ in $(seq 50); do
    [ -z "$(squeue -h -t running,completing,pending -o %i 2>/dev/null)" ] && break
    sleep 0.2
  done
fi

stop() {  # name pidfile
  local pid
  [ -s "$2" ] || return 0
  pid=$(cat "$2")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then
      kill -9 "$pid" 2>/dev/null
      log "killed $1 ($pid) with SIGKILL"
    else
      log "stopped $1 ($pid)"
    fi
  fi
  rm -f "$2"
}
stop slurmd "$BASE/run/slurmd.pid"
stop slurmctld "$BASE/run/slurmctld.pid"
stop munged "$BASE/run/munged.pid"   # present only when start.sh started munged

if [ -L /etc/slurm/slurm.conf ] && [ "$(readlink /etc/slurm/slurm.conf)" = "$BASE/etc/slurm.conf" ]; then
  rm -f /etc/slurm/slurm.conf
fi
if [ "${1:-}" = --purge ]; then
  rm -rf "$BASE"
  log "removed $BASE"
fi
exit 0
