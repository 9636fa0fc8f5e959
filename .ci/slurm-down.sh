#!/usr/bin/env bash
# Stop exactly the daemons .ci/slurm-up.sh started: the pids it wrote to $QS_SLURM_PIDS.
# A cluster that was already running before slurm-up.sh is left alone.
PIDS=${QS_SLURM_PIDS:-/run/qs-slurm.pids}
[ -s "$PIDS" ] || exit 0
# slurmd first, then slurmctld, then munged (reverse start order)
tac "$PIDS" | while read -r name pid; do
    [ -n "$pid" ] || continue
    # only a live process with the recorded name (the pid may have been reused)
    if [ "$(cat /proc/"$pid"/comm 2>/dev/null)" = "$name" ]; then
        kill "$pid" 2>/dev/null
        for i in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    fi
done
rm -f "$PIDS"
true
