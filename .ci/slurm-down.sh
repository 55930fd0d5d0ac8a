#!/usr/bin/env bash
# Stop exactly the daemons .ci/slurm-up.sh started: the PIDs it recorded in $SLURM_CI_DIR/pids
# (default /tmp/slurm-ci/pids), each only if that PID is still the same daemon. Nothing else is
# touched (a munged or slurmd someone else started keeps running). Idempotent: without a pids file
# it does nothing. Exits non-zero if a daemon does not stop.
set -uo pipefail

BASE=${SLURM_CI_DIR:-/tmp/slurm-ci}
PIDS=$BASE/pids
[ -s "$PIDS" ] || { echo "slurm-down: nothing to stop ($PIDS absent)" >&2; exit 0; }

alive() { [ "$(cat /proc/"$2"/comm 2>/dev/null)" = "$1" ]; }

rc=0
# reverse order: slurmd, slurmctld, then munged
for entry in $(tac "$PIDS" | tr ' ' ':'); do
  name=${entry%%:*}; pid=${entry#*:}
  alive "$name" "$pid" || continue
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 100); do alive "$name" "$pid" || break; sleep 0.1; done
  if alive "$name" "$pid"; then
    echo "slurm-down: $name ($pid) ignored SIGTERM for 10 s, sending SIGKILL" >&2
    kill -KILL "$pid" 2>/dev/null || true
    sleep 0.5
    alive "$name" "$pid" && { echo "slurm-down: ERROR: $name ($pid) still running" >&2; rc=1; continue; }
  fi
  echo "slurm-down: stopped $name ($pid)" >&2
done
[ "$rc" = 0 ] && rm -f "$PIDS"
exit "$rc"
