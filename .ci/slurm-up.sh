#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for tests/test_slurm.py (pytest -m slurm).
#
# Debian 12 (or any apt-based system), as root, with or without systemd:
#   - installs slurmctld, slurmd, slurm-client and munge with apt-get if any is missing (~12 s);
#   - writes /etc/slurm/slurm.conf (and gres.conf): one node = this host on 127.0.0.1, partition
#     "debug", FAKE_GPUS fake GPUs (GRES gpu backed by /dev/null-like files: jobs asking --gpus=1 run
#     and see CUDA_VISIBLE_DEVICES, no real GPU needed), no accounting, MinJobAge=600 (finished jobs
#     stay in `squeue --states=all` for 10 minutes: the Snakemake SLURM plugin's squeue status check
#     needs MinJobAge >= 3 x slurm-init-seconds-before-status-checks);
#   - starts munged, slurmctld and slurmd (each only if not already running) and appends the PID of
#     each daemon it started to $SLURM_CI_DIR/pids, which .ci/slurm-down.sh reads;
#   - waits until the node is idle.
# Idempotent: a second call with the cluster up returns at once. Loud: any failure exits non-zero
# after printing what it knows (daemon logs, sinfo).
#
# Environment: SLURM_CI_DIR (state, logs, pids; default /tmp/slurm-ci), FAKE_GPUS (default 2).
# The config must live at the compiled-in path /etc/slurm/slurm.conf: the plugin's job step strips
# every SLURM_* variable (SLURM_CONF too) before its inner srun. An existing slurm.conf not written
# by this script is moved aside to slurm.conf.before-ci (once), never silently lost.
set -euo pipefail

BASE=${SLURM_CI_DIR:-/tmp/slurm-ci}
FAKE_GPUS=${FAKE_GPUS:-2}
PIDS=$BASE/pids
MARK="# written by .ci/slurm-up.sh"
T0=$(date +%s)

die() { echo "slurm-up: ERROR: $*" >&2; exit 1; }
say() { echo "slurm-up: $*" >&2; }
dump_logs() {
  for f in "$BASE"/log/*.log; do [ -f "$f" ] && { echo "--- $f (last 30 lines)" >&2; tail -n 30 "$f" >&2; }; done
  sinfo -N -o '%N %t %c %m %G %E' >&2 2>&1 || true
}
# alive NAME PID: PID is a running process whose command name is NAME
alive() { [ -n "${2:-}" ] && [ "$(cat /proc/"$2"/comm 2>/dev/null)" = "$1" ]; }
recorded_pid() { [ -f "$PIDS" ] && awk -v n="$1" '$1 == n {p = $2} END {print p}' "$PIDS"; }
node_state() { sinfo -h -N -o %t 2>/dev/null | head -1; }

[ "$(id -u)" = 0 ] || die "must run as root (installs packages, writes /etc/slurm, starts daemons)"
[[ "$FAKE_GPUS" =~ ^[0-9]+$ ]] || die "FAKE_GPUS must be a number, got '$FAKE_GPUS'"

# 0. already up (all three of ours alive, node idle)? Then nothing to do.
if alive munged "$(recorded_pid munged)" && alive slurmctld "$(recorded_pid slurmctld)" \
    && alive slurmd "$(recorded_pid slurmd)" && [ "$(node_state)" = idle ]; then
  say "already up (pids in $PIDS)"; sinfo -N -o '%N %t %c %m %G'; exit 0
fi

mkdir -p "$BASE"/{state,spool,log,pid,dev}

# 1. packages
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null \
    || ! command -v munged >/dev/null; then
  command -v apt-get >/dev/null || die "SLURM is not installed and apt-get is unavailable"
  say "installing slurmctld slurmd slurm-client munge (log: $BASE/apt.log)"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      slurmctld slurmd slurm-client munge; } >"$BASE/apt.log" 2>&1 \
    || { tail -n 30 "$BASE/apt.log" >&2; die "apt-get install failed (full log: $BASE/apt.log)"; }
fi

# 2. munge. Without systemd /run/munge does not exist; munged must run as user munge.
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  install -d -o munge -g munge -m 0700 /etc/munge /var/lib/munge /var/log/munge
  install -d -o munge -g munge -m 0755 /run/munge
  if [ ! -s /etc/munge/munge.key ]; then
    mungekey --create --force >/dev/null 2>&1 \
      || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  fi
  chown munge:munge /etc/munge/munge.key; chmod 0400 /etc/munge/munge.key
  rm -f /run/munge/munged.pid
  runuser -u munge -- /usr/sbin/munged || die "munged did not start (see /var/log/munge/munged.log)"
  for _ in $(seq 50); do [ -s /run/munge/munged.pid ] && break; sleep 0.1; done
  pid=$(cat /run/munge/munged.pid 2>/dev/null || true)
  alive munged "$pid" || die "munged started but wrote no pid file"
  echo "munged $pid" >>"$PIDS"
  munge -n | unmunge >/dev/null || die "munge does not work after starting munged"
  say "started munged ($pid)"
fi

# 3. config (rewritten every time the daemons are (re)started; identical content each time)
HOST=$(hostname -s 2>/dev/null || uname -n | cut -d. -f1)
[ -n "$HOST" ] || die "cannot determine the short host name"
CPUS=$(nproc)
MEM=$(( $(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo) - 1024 ))
[ "$MEM" -gt 1024 ] || MEM=1024
mkdir -p /etc/slurm
for f in slurm.conf gres.conf; do
  if [ -e /etc/slurm/$f ] && ! grep -qF "$MARK" /etc/slurm/$f 2>/dev/null \
      && [ ! -e /etc/slurm/$f.before-ci ]; then
    mv /etc/slurm/$f /etc/slurm/$f.before-ci; say "moved the existing /etc/slurm/$f to $f.before-ci"
  fi
done
GRES_TYPES=""; GRES_NODE=""; rm -f /etc/slurm/gres.conf
if [ "$FAKE_GPUS" -gt 0 ]; then
  GRES_TYPES="GresTypes=gpu"; GRES_NODE="Gres=gpu:$FAKE_GPUS"
  # One fake "device" per GPU: character devices like /dev/null (a GRES needs a File=; Count without
  # File= makes the node INVAL). mknod may be refused in a container: fall back to /dev/null itself
  # (then only one fake GPU).
  {
    echo "$MARK"
    for i in $(seq 0 $((FAKE_GPUS - 1))); do
      dev=$BASE/dev/fakegpu$i
      [ -c "$dev" ] || mknod -m 0666 "$dev" c 1 3 2>/dev/null || true
      [ -c "$dev" ] || break
      echo "NodeName=$HOST Name=gpu File=$dev"
    done
  } >/etc/slurm/gres.conf
  n=$(grep -c '^NodeName=' /etc/slurm/gres.conf || true)
  if [ "$n" = 0 ]; then
    echo "NodeName=$HOST Name=gpu File=/dev/null" >>/etc/slurm/gres.conf; n=1
  fi
  [ "$n" = "$FAKE_GPUS" ] || say "WARNING: mknod refused: $n fake GPU(s) instead of $FAKE_GPUS"
  GRES_NODE="Gres=gpu:$n"
fi
cat >/etc/slurm/slurm.conf <<EOF
$MARK (one-node CI cluster; state and logs in $BASE)
ClusterName=ci
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
ReturnToService=2
# finished jobs stay visible to 'squeue --states=all' (the plugin needs >= 3 x init seconds)
MinJobAge=600
StateSaveLocation=$BASE/state
SlurmdSpoolDir=$BASE/spool
SlurmctldPidFile=$BASE/pid/slurmctld.pid
SlurmdPidFile=$BASE/pid/slurmd.pid
SlurmctldLogFile=$BASE/log/slurmctld.log
SlurmdLogFile=$BASE/log/slurmd.log
$GRES_TYPES
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM $GRES_NODE State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF

# 4. daemons: start each one that is not running; they fork and write their pid files.
start_daemon() {  # NAME ARGS...
  local name=$1; shift
  local pidfile=$BASE/pid/$name.pid pid
  pid=$(recorded_pid "$name")
  if alive "$name" "$pid"; then return 0; fi
  pid=$(grep -lx "$name" /proc/[0-9]*/comm 2>/dev/null | head -1 | cut -d/ -f3 || true)  # no procps needed
  [ -z "$pid" ] || die "a $name not started by this script is running (pid $pid); stop it first"
  rm -f "$pidfile"
  "$name" "$@" || { dump_logs; die "$name failed to start"; }
  for _ in $(seq 100); do [ -s "$pidfile" ] && alive "$name" "$(cat "$pidfile")" && break; sleep 0.1; done
  pid=$(cat "$pidfile" 2>/dev/null || true)
  alive "$name" "$pid" || { dump_logs; die "$name exited right after starting"; }
  echo "$name $pid" >>"$PIDS"
  say "started $name ($pid)"
}
start_daemon slurmctld -c   # -c: a clean slate, no jobs left over from an earlier run
start_daemon slurmd

for _ in $(seq 120); do [ "$(node_state)" = idle ] && break; sleep 0.5; done
[ "$(node_state)" = idle ] || { dump_logs; die "node not idle after 60 s (state: '$(node_state)')"; }
sinfo -N -o '%N %t %c %m %G'
say "up in $(( $(date +%s) - T0 )) s (pids in $PIDS)"
