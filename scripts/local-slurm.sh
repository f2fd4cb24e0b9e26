#!/usr/bin/env bash
# A single-node SLURM cluster on this machine, for testing the workflow's SLURM profile (CI, .ci/run):
#   sudo bash scripts/local-slurm.sh start|stop|status
# As root on Debian/Ubuntu: installs slurm-wlm and munge (apt) if missing, writes /etc/slurm/slurm.conf and
# gres.conf, and starts munged, slurmctld and slurmd (idempotent: a running daemon is left alone; stop kills
# the PIDs it recorded). One partition, `gpu` (the default), whose node is this machine with its real CPUs
# and memory and ILF_SLURM_GPUS (default 8) fake GPUs: GRES on character devices made with mknod (copies of
# /dev/null), so GPU-requesting jobs schedule on a GPU-less machine. EnforcePartLimits=ALL makes sbatch refuse a
# job the node can never run instead of queueing it forever. No slurmdbd: `sacct` does not answer, so
# Snakemake's status queries need `--slurm-status-command squeue` (MinJobAge=600 keeps finished jobs visible).
# State, logs and PID files live in ILF_SLURM_DIR (default /var/lib/ilf-slurm).
set -euo pipefail

D=${ILF_SLURM_DIR:-/var/lib/ilf-slurm}
GPUS=${ILF_SLURM_GPUS:-8}
CONF=/etc/slurm/slurm.conf
MUNGE_PID=$D/munged.pid

die() { echo "local-slurm: $*" >&2; exit 1; }
alive() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

install_packages() {
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null && return
    command -v apt-get >/dev/null || die "slurm-wlm and munge are missing and this is not a Debian/Ubuntu machine"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge >/dev/null \
        || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge >/dev/null; }
}

write_config() {
    local node host
    host=$(hostname -s)
    # this machine's real CPU layout and memory, as slurmd sees them (a node claiming more is drained)
    node=$(slurmd -C | head -n1)
    mkdir -p "$D/state" "$D/spool" "$D/dev" /etc/slurm
    for ((i = 0; i < GPUS; i++)); do
        [[ -c $D/dev/fakegpu$i ]] || mknod "$D/dev/fakegpu$i" c 1 3  # same device numbers as /dev/null
    done
    cat > "$CONF.new" <<EOF
# written by scripts/local-slurm.sh: single-node test cluster with $GPUS fake GPUs
ClusterName=ilf-local
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$D/state
SlurmdSpoolDir=$D/spool
SlurmctldPidFile=$D/slurmctld.pid
SlurmdPidFile=$D/slurmd.pid
SlurmctldLogFile=$D/slurmctld.log
SlurmdLogFile=$D/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
GresTypes=gpu
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
EnforcePartLimits=ALL
MinJobAge=600
ReturnToService=2
SlurmdTimeout=60
$node Gres=gpu:$GPUS State=UNKNOWN
PartitionName=gpu Nodes=$host Default=YES MaxTime=2-00:00:00 State=UP
EOF
    echo "NodeName=$host Name=gpu File=$D/dev/fakegpu[0-$((GPUS - 1))]" > /etc/slurm/gres.conf.new
    mv "$CONF.new" "$CONF"
    mv /etc/slurm/gres.conf.new /etc/slurm/gres.conf
}

start() {
    [[ $(id -u) == 0 ]] || die "run as root (sudo bash $0 start)"
    install_packages
    mkdir -p "$D" /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    [[ -s /etc/munge/munge.key ]] || { mungekey --create 2>/dev/null || create-munge-key -f; }
    if ! alive "$MUNGE_PID" && ! munge -n >/dev/null 2>&1; then
        runuser -u munge -- munged
        cp /run/munge/munged.pid "$MUNGE_PID"  # ours to stop (a munged we did not start is left alone)
    fi
    if ! alive "$D/slurmctld.pid" || ! alive "$D/slurmd.pid"; then
        write_config
    fi
    alive "$D/slurmctld.pid" || slurmctld
    alive "$D/slurmd.pid" || slurmd
    for _ in $(seq 60); do  # wait until the node takes jobs
        state=$(sinfo -h -N -o %t 2>/dev/null | head -n1 || true)
        [[ $state == idle || $state == mix || $state == alloc ]] && { status; return 0; }
        [[ $state == drain* || $state == inval* ]] && scontrol update nodename="$(hostname -s)" state=resume
        sleep 1
    done
    tail -n 20 "$D/slurmctld.log" "$D/slurmd.log" >&2 || true
    die "the node did not come up (state: ${state:-none})"
}

stop() {
    for f in "$D/slurmd.pid" "$D/slurmctld.pid" "$MUNGE_PID"; do
        if alive "$f"; then
            pid=$(cat "$f")
            kill "$pid"
            for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        fi
        rm -f "$f"
    done
    echo "local-slurm: stopped"
}

status() {
    for f in "$MUNGE_PID" "$D/slurmctld.pid" "$D/slurmd.pid"; do
        alive "$f" && echo "$(basename "$f" .pid): running (pid $(cat "$f"))" || echo "$(basename "$f" .pid): stopped"
    done
    alive "$D/slurmctld.pid" && sinfo -o "%P %D %t %c %m %G" || return 1
}

case ${1:-} in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) die "usage: $0 start|stop|status" ;;
esac
