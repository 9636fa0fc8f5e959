#!/usr/bin/env bash
# Bring up a one-node SLURM cluster on this machine (as root) for the cluster-profile test
# (workflow_tests/test_slurm.py). Needs Debian's slurm-wlm and munge (.ci/run installs them).
#
# - If a cluster already answers (`sinfo`), nothing is started or changed.
# - Otherwise munged (unless a munge daemon already answers), slurmctld and slurmd are started
#   with a one-node config: all CPUs, 80% of the memory, one fake `gpu` gres (File=/dev/null),
#   so jobs that request --gpus=1 are scheduled. Their pids go to $QS_SLURM_PIDS
#   (default /run/qs-slurm.pids); .ci/slurm-down.sh stops exactly those pids.
# Prints "slurm up" (or "slurm already up") on success.
set -euo pipefail
PIDS=${QS_SLURM_PIDS:-/run/qs-slurm.pids}
CONF=/etc/slurm/slurm.conf   # job steps drop SLURM_CONF: the default path must hold the config
MARK="# written by qs .ci/slurm-up.sh"

if timeout 10 sinfo -h >/dev/null 2>&1; then echo "slurm already up"; exit 0; fi
[ "$(id -u)" = 0 ] || { echo "slurm-up: must run as root" >&2; exit 1; }
for exe in munged slurmctld slurmd sinfo; do
    command -v "$exe" >/dev/null || [ -x "/usr/sbin/$exe" ] || { echo "slurm-up: $exe missing (apt-get install -y slurm-wlm munge)" >&2; exit 1; }
done
if [ -e "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
    echo "slurm-up: $CONF exists and was not written by this script; not touching it" >&2; exit 1
fi
: > "$PIDS"
record() {  # NAME PIDFILE: wait for the daemon's pid file, append "NAME PID" to $PIDS
    for i in $(seq 1 40); do [ -s "$2" ] && break; sleep 0.25; done
    echo "$1 $(cat "$2")" >> "$PIDS"
}

# munge: key and daemon (as the munge user)
if ! (munge -n </dev/null | unmunge >/dev/null) 2>/dev/null; then
    install -d -o munge -g munge -m 0700 /run/munge /var/log/munge /var/lib/munge
    [ -s /etc/munge/munge.key ] || /usr/sbin/mungekey --create 2>/dev/null \
        || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 2>/dev/null
    chown munge:munge /etc/munge/munge.key; chmod 0400 /etc/munge/munge.key
    rm -f /run/munge/munged.pid
    runuser -u munge -- /usr/sbin/munged --force
    record munged /run/munge/munged.pid
fi

CPUS=$(nproc)
MEM=$(( $(awk '/MemTotal/{print $2}' /proc/meminfo) / 1024 * 8 / 10 ))
install -d /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /etc/slurm
cat > "$CONF" <<CONF
$MARK
ClusterName=local
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
MinJobAge=600
GresTypes=gpu
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ReturnToService=2
NodeName=localhost CPUs=$CPUS RealMemory=$MEM Gres=gpu:1 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF
echo "NodeName=localhost Name=gpu File=/dev/null" > /etc/slurm/gres.conf

rm -f /run/slurmctld.pid /run/slurmd.pid
slurmctld -c   # -c: without jobs left over from an earlier run
record slurmctld /run/slurmctld.pid
slurmd -N localhost
record slurmd /run/slurmd.pid
for i in $(seq 1 60); do
    sinfo -h -o %t 2>/dev/null | grep -q idle && { echo "slurm up"; exit 0; }
    sleep 1
done
echo "slurm-up: the node did not become idle" >&2; sinfo >&2 || true; exit 1
