#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine, for the SLURM tests (tests/test_slurm.py).
#
#   sudo scripts/slurm-cluster.sh start    # install (Debian slurm-wlm + munge) if needed, configure, start
#   sudo scripts/slurm-cluster.sh status
#   sudo scripts/slurm-cluster.sh stop
#
# One partition "debug" with this machine's cores and memory and two fake GPUs: SLURM needs GPU GRES to be
# character devices, so /dev/fakegpu0-1 are created with mknod (they are /dev/null's device numbers).
# Facts this follows: shared/notes/local-slurm.md (measured on this kind of machine).
set -euo pipefail

STATE=${PSSL_SLURM_STATE:-/var/lib/pssl-slurm}
CONF=/etc/slurm/slurm.conf
HOST=$(hostname -s)

need_root() { [ "$(id -u)" -eq 0 ] || { echo "run as root (sudo $0 $*)" >&2; exit 1; }; }

install() {
    if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
        echo "installing slurmctld slurmd slurm-client munge from Debian"
        apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurmctld slurmd slurm-client munge
    fi
}

start_munge() {
    if [ ! -s /etc/munge/munge.key ]; then
        dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
    fi
    chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
    mkdir -p /run/munge /var/log/munge /var/lib/munge && chown munge:munge /run/munge /var/log/munge /var/lib/munge
    pgrep -x munged >/dev/null || runuser -u munge -- /usr/sbin/munged
    munge -n | unmunge | grep -q "STATUS: *Success" || { echo "munge does not work" >&2; exit 1; }
}

configure() {
    local cpus mem
    cpus=$(nproc)
    mem=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
    mkdir -p "$STATE"/{spool,state,log} /etc/slurm
    for i in 0 1; do [ -c /dev/fakegpu$i ] || mknod /dev/fakegpu$i c 1 3; done
    cat > "$CONF" <<CONF
ClusterName=pssl-local
SlurmctldHost=$HOST
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
GresTypes=gpu
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
ReturnToService=2
SlurmdSpoolDir=$STATE/spool
StateSaveLocation=$STATE/state
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SchedulerType=sched/backfill
MinJobAge=300
NodeName=$HOST CPUs=$cpus RealMemory=$mem Gres=gpu:fake:2 Feature=fakegpu State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
# A second partition on the same node: the tests check that CPU rules go to cluster.cpu_partition.
PartitionName=cpu Nodes=$HOST MaxTime=INFINITE State=UP
CONF
    echo "NodeName=$HOST Name=gpu Type=fake File=/dev/fakegpu[0-1]" > /etc/slurm/gres.conf
}

wait_idle() {
    for _ in $(seq 60); do
        state=$(sinfo -h -n "$HOST" -o %t 2>/dev/null || true)
        case "$state" in
            idle*|mix*|alloc*) echo "SLURM up: partition debug on $HOST is $state"; return 0 ;;
            inval*|drain*|down*) scontrol update nodename="$HOST" state=resume 2>/dev/null || true ;;
        esac
        sleep 1
    done
    echo "SLURM did not come up; logs in $STATE/log" >&2
    exit 1
}

case "${1:-start}" in
    start)
        need_root "$@"
        install
        start_munge
        configure
        pgrep -x slurmctld >/dev/null || slurmctld
        pgrep -x slurmd >/dev/null || slurmd
        wait_idle
        ;;
    stop)
        need_root "$@"
        pkill -x slurmd || true
        pkill -x slurmctld || true
        echo "SLURM stopped"
        ;;
    status)
        sinfo
        squeue
        ;;
    *)
        echo "usage: $0 start|stop|status" >&2
        exit 2
        ;;
esac
