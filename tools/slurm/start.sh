#!/usr/bin/env bash
# Start a throw-away single-node Slurm cluster on this machine (Debian 12 packages, Slurm 22.05), for the
# slurm-marked tests and for trying `snakemake --profile ...` without a real cluster. Runs as root, without
# systemd: munged, slurmctld and slurmd are started by hand and stopped by tools/slurm/stop.sh (by pid file).
#
#   tools/slurm/start.sh            install what is missing, write the config, start, wait for the node
#   tools/slurm/stop.sh             stop the daemons (tools/slurm/stop.sh --purge also deletes the state)
#
# Environment:
#   SLURM_BASE=/tmp/cxlspeaks-slurm   state, spool, logs, pid files and the config (etc/slurm.conf, gres.conf)
#   SLURM_FAKE_GPUS=2                 GPUs the node advertises ("gpu" GRES backed by /dev/null clones under
#                                     $SLURM_BASE/fakedev: GPU jobs are scheduled and then run on the CPU)
#   SLURM_REPLACE_CONF=0              1: replace an /etc/slurm/slurm.conf that this script did not write
#
# What it sets up: one node named `hostname -s` with the CPUs `slurmd -C` reports and 90 % of its memory
# (RealMemory above what slurmd detects drains the node; memory is checked per job but not consumed: CR_Core),
# two partitions over that node, `cpu` (the default) and `gpu` (the names profiles/slurm uses as
# placeholders), no accounting database (so `sacct` does not work: profiles use
# `slurm-status-command: squeue`), finished jobs kept visible to squeue and `scontrol show job` for
# MinJobAge = 1 h. The config is written to $SLURM_BASE/etc and /etc/slurm/slurm.conf
# is made a symlink to it, so that sbatch, squeue, sinfo, scontrol find it without SLURM_CONF.
#
# Idempotent: when the daemons of this $SLURM_BASE already run and the node is up, it says so and exits 0;
# a half-running cluster is stopped and started afresh. Never touches systemd or services of the system.
set -euo pipefail

BASE=${SLURM_BASE:-${TMPDIR:-/tmp}/cxlspeaks-slurm}
FAKE_GPUS=${SLURM_FAKE_GPUS:-2}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
MARK="# written by cxlspeaks tools/slurm/start.sh"
export DEBIAN_FRONTEND=noninteractive

t0=$(date +%s)
log() { echo "[slurm start +$(($(date +%s) - t0))s] $*"; }
die() {  # report, undo what this run started (stop.sh ends only daemons with pid files in $BASE/run), fail
  echo "[slurm start] error: $*" >&2
  [ "${started:-0}" = 1 ] && bash "$HERE/stop.sh" >&2
  exit 1
}
alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }  # pid file -> its process runs

[ "$(id -u)" = 0 ] || die "run as root (it installs packages and starts daemons as root)"

# ------------------------------------------------------------------------------------------------ packages
pkgs=(slurmctld slurmd slurm-client munge)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]} (apt-get update first)"
  # Keep the packages' maintainer scripts from starting services (policy-rc.d exit 101 = "not allowed");
  # only when the machine has no policy of its own, and removed again afterwards.
  policy_added=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && policy_added=1
  fi
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  [ "$policy_added" = 1 ] && rm -f /usr/sbin/policy-rc.d
fi
log "slurm $(dpkg-query -W -f='${Version}' slurmctld), munge $(dpkg-query -W -f='${Version}' munge)"

# ------------------------------------------------------------------------------------------------ already up?
HOST=$(hostname -s)
if alive "$BASE/run/slurmctld.pid" && alive "$BASE/run/slurmd.pid"; then
  state=$(sinfo -h -n "$HOST" -o %T 2>/dev/null | head -1 || true)
  case "$state" in
    idle | mixed | allocated | completing)
      log "already running (node $HOST: $state; base $BASE)"
      exit 0 ;;
  esac
fi
if alive "$BASE/run/slurmctld.pid" || alive "$BASE/run/slurmd.pid"; then
  log "a half-running cluster in $BASE: stopping it first"
  bash "$HERE/stop.sh"
fi

# ------------------------------------------------------------------------------------------------ config
if [ -e /etc/slurm/slurm.conf ] || [ -L /etc/slurm/slurm.conf ]; then
  target=$(readlink -f /etc/slurm/slurm.conf || true)
  if [ "$target" != "$BASE/etc/slurm.conf" ] && ! grep -qF "$MARK" /etc/slurm/slurm.conf 2>/dev/null \
      && [ "${SLURM_REPLACE_CONF:-0}" != 1 ]; then
    die "/etc/slurm/slurm.conf exists and was not written by this script (a real cluster's?); not touching it.
       Set SLURM_REPLACE_CONF=1 to replace it with a link to $BASE/etc/slurm.conf."
  fi
fi

mkdir -p "$BASE"/{etc,state,spool,log,run}
# the state of an earlier run (old jobs, drain reasons) is not wanted: slurmctld -c below also ignores it
rm -rf "$BASE/state"/* "$BASE/spool"/*
# RealMemory must not exceed what slurmd detects, otherwise the node is drained: take 90 %.
DETECTED=$(slurmd -C | head -1)
MEM=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$DETECTED")
MEM=$((MEM * 90 / 100))
# CPUs, Boards, SocketsPerBoard, CoresPerSocket, ThreadsPerCore exactly as slurmd detects them
TOPO=$(sed -e 's/^NodeName=[^ ]* //' -e 's/ RealMemory=[0-9]*//' -e 's/ UpTime=.*//' <<<"$DETECTED")

GRES_TYPES="" GRES_NODE=""
rm -f "$BASE/etc/gres.conf"
if [ "$FAKE_GPUS" -gt 0 ]; then
  # gres/gpu drops GPUs without File= ("Removing file-less GPU", node then INVALID_REG) and wants character
  # devices: /dev/null clones (major 1, minor 3).
  mkdir -p "$BASE/fakedev"
  for i in $(seq 0 $((FAKE_GPUS - 1))); do
    [ -c "$BASE/fakedev/nvidia$i" ] || mknod "$BASE/fakedev/nvidia$i" c 1 3
  done
  GRES_TYPES="GresTypes=gpu"
  GRES_NODE="Gres=gpu:$FAKE_GPUS"
  cat > "$BASE/etc/gres.conf" <<EOF
$MARK
NodeName=$HOST Name=gpu File=$BASE/fakedev/nvidia[0-$((FAKE_GPUS - 1))]
EOF
fi

cat > "$BASE/etc/slurm.conf" <<EOF
$MARK (base $BASE)
ClusterName=cxlslocal
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MailProg=/bin/true
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$BASE/state
SlurmdSpoolDir=$BASE/spool/slurmd-%n
SlurmctldPidFile=$BASE/run/slurmctld.pid
SlurmdPidFile=$BASE/run/slurmd.pid
SlurmctldLogFile=$BASE/log/slurmctld.log
SlurmdLogFile=$BASE/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# no cgroups: plain process tracking; task/affinity pins each job's CPUs (sched_setaffinity)
ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
# CPUs are the consumable resource, memory is not (CR_Core): a job may still not ask for more than RealMemory, but
# the tiny test jobs use far less than their rules request (train: 16 GB), so memory must not serialize them
SelectTypeParameters=CR_Core
# finished jobs stay visible to squeue / scontrol for an hour (the plugin's squeue status mode needs
# MinJobAge >= 3 x init-seconds-before-status-checks; the tests read the jobs back afterwards)
MinJobAge=3600
# no slurmdbd: no accounting, so sacct fails -> profiles must use slurm-status-command: squeue
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
$GRES_TYPES
NodeName=$HOST NodeAddr=127.0.0.1 $TOPO RealMemory=$MEM $GRES_NODE State=UNKNOWN
PartitionName=cpu Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$HOST Default=NO MaxTime=INFINITE State=UP
EOF
# the slurmd spool (its domain socket) must exist before slurmd starts
mkdir -p "$BASE/spool/slurmd-$HOST"
mkdir -p /etc/slurm
ln -sfn "$BASE/etc/slurm.conf" /etc/slurm/slurm.conf
# the daemons read the config (and gres.conf beside it) from $BASE/etc
export SLURM_CONF="$BASE/etc/slurm.conf"
log "config $SLURM_CONF: $TOPO RealMemory=$MEM ${GRES_NODE:-(no gpu)}"

# ------------------------------------------------------------------------------------------------ munge
started=1
munge_ok() { munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; }
[ -s /etc/munge/munge.key ] || mungekey --create --keyfile=/etc/munge/munge.key
chown munge:munge /etc/munge/munge.key
chmod 400 /etc/munge/munge.key
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge
chmod 755 /run/munge
if munge_ok; then
  log "munged already running$(alive "$BASE/run/munged.pid" && echo " (ours, pid $(cat "$BASE/run/munged.pid"))" \
    || echo " (not started by this script: left alone)")"
else
  rm -f "$BASE/run/munged.pid" /run/munge/munged.pid
  runuser -u munge -- /usr/sbin/munged   # daemonizes, runs as user munge, writes /run/munge/munged.pid
  for _ in $(seq 50); do munge_ok && [ -s /run/munge/munged.pid ] && break; sleep 0.1; done
  munge_ok || die "munged did not come up"
  cp /run/munge/munged.pid "$BASE/run/munged.pid"   # our copy: stop.sh ends only a munged we started
  log "munged up (pid $(cat "$BASE/run/munged.pid"))"
fi

# ------------------------------------------------------------------------------------------------ daemons
# -c: clean state (no old jobs, no DRAIN reasons kept from an earlier config); both daemonize and write
# their pid files into $BASE/run.
/usr/sbin/slurmctld -c
for _ in $(seq 100); do scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.2; done
scontrol ping 2>/dev/null | grep -q UP || { tail -20 "$BASE/log/slurmctld.log" >&2; die "slurmctld did not come up"; }
/usr/sbin/slurmd
state=""
for _ in $(seq 150); do
  state=$(sinfo -h -n "$HOST" -o %T 2>/dev/null | head -1 || true)
  [ "$state" = idle ] && break
  sleep 0.2
done
log "slurmctld pid $(cat "$BASE/run/slurmctld.pid"), slurmd pid $(cat "$BASE/run/slurmd.pid"), node $HOST: ${state:-?}"
if [ "$state" != idle ]; then
  sinfo -R >&2 || true
  tail -20 "$BASE/log/slurmd.log" >&2 || true
  die "node $HOST is not idle (see $BASE/log/)"
fi
sinfo -o '%P %a %D %c %m %G %T'
log "ready (logs: $BASE/log; stop: $HERE/stop.sh)"
