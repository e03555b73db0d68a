#!/usr/bin/env bash
# One-node SLURM test cluster with 2 fake GPUs, for CI (see docs/cluster.md and ../shared/reference/slurm.md).
#
#   ci/slurm/cluster.sh start    install slurm + munge if missing, (re)start a clean cluster, wait until idle
#   ci/slurm/cluster.sh stop     scancel leftover jobs, stop the daemons this script started (by recorded PID)
#   ci/slurm/cluster.sh status   print the daemons' PIDs and the node state
#
# Runs as root on a Debian bookworm machine. Everything it owns lives in $LOSSABLATION_SLURM_STATE
# (default /var/tmp/lossablation-slurm), which is wiped on every start so a node drained by an earlier
# bad config comes back clean. /etc/slurm/{slurm,gres}.conf are written only if absent or written by this
# script before (marker line), so a real cluster's config is never overwritten.
set -euo pipefail

STATE=${LOSSABLATION_SLURM_STATE:-/var/tmp/lossablation-slurm}
CONF_DIR=/etc/slurm
MARKER="# managed by lossablation ci/slurm/cluster.sh"
N_GPUS=${LOSSABLATION_SLURM_GPUS:-2}
WAIT_S=${LOSSABLATION_SLURM_WAIT_S:-60}
PARTITION=${LOSSABLATION_SLURM_PARTITION:-ci}
DAEMONS=(slurmd slurmctld munged)   # stop order: slurmd first, munged last

log() { echo "[slurm-ci] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

need_root() { [ "$(id -u)" = 0 ] || die "must run as root (installs packages, writes /etc/slurm)"; }

install_packages() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
        && command -v munged >/dev/null; then
        return
    fi
    log "installing slurmctld slurmd slurm-client munge"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null 2>&1; then
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
    fi
}

pid_alive() {  # pid_alive NAME: the recorded PID exists and is still that program
    local f="$STATE/pids/$1.pid" pid
    [ -s "$f" ] || return 1
    pid=$(cat "$f")
    [ -d "/proc/$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$1" ]
}

stop_pid() {  # stop_pid NAME: TERM the recorded PID, wait up to 20 s, then KILL
    local name=$1 pid i
    pid_alive "$name" || { rm -f "$STATE/pids/$name.pid"; return 0; }
    pid=$(cat "$STATE/pids/$name.pid")
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 100); do
        pid_alive "$name" || break
        sleep 0.2
    done
    if pid_alive "$name"; then
        log "$name (pid $pid) ignored TERM for 20 s; sending KILL"
        kill -KILL "$pid" 2>/dev/null || true
        sleep 0.5
    fi
    rm -f "$STATE/pids/$name.pid"
}

cancel_jobs() {
    pid_alive slurmctld || return 0
    local ids i
    ids=$(squeue -h -o %i 2>/dev/null || true)
    [ -n "$ids" ] || return 0
    log "cancelling leftover jobs: $(echo $ids)"
    # shellcheck disable=SC2086
    scancel $ids 2>/dev/null || true
    for i in $(seq 1 50); do
        [ -z "$(squeue -h -t PD,R,CG,S -o %i 2>/dev/null)" ] && return 0
        sleep 0.2
    done
    log "jobs still listed after 10 s: $(squeue -h -o '%i %T' 2>/dev/null | tr '\n' ' ')"
}

do_stop() {
    [ -d "$STATE/pids" ] || { log "nothing recorded in $STATE/pids; nothing to stop"; return 0; }
    cancel_jobs
    local d
    for d in "${DAEMONS[@]}"; do stop_pid "$d"; done
    log "stopped"
}

start_detached() {  # start_detached NAME LOGFILE CMD...: setsid'd daemon in the foreground mode; record its PID
    local name=$1 logfile=$2; shift 2
    # A background child of this (non-interactive) shell is not a process-group leader, so setsid (and
    # setpriv) exec in place and $! is the daemon's own PID.
    setsid "$@" </dev/null >>"$logfile" 2>&1 &
    local pid=$! i
    echo "$pid" >"$STATE/pids/$name.pid"
    # until the exec chain (setsid [setpriv]) reaches the daemon, /proc/PID/comm names the wrapper
    for i in $(seq 1 50); do
        pid_alive "$name" && return 0
        [ -d "/proc/$pid" ] || break
        sleep 0.1
    done
    die "$name did not start; $(tail -n 20 "$logfile" 2>/dev/null)"
}

start_munge() {
    if pid_alive munged; then return; fi
    if [ ! -s /etc/munge/munge.key ]; then
        log "creating /etc/munge/munge.key"
        install -d -o munge -g munge -m 700 /etc/munge
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
    chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
    install -d -o munge -g munge -m 755 /run/munge
    install -d -o munge -g munge -m 700 /var/lib/munge /var/log/munge
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        log "a munged not started by this script already answers; using it"
        return
    fi
    start_detached munged "$STATE/log/munged.log" setpriv --reuid=munge --regid=munge --init-groups munged -F
    local i
    for i in $(seq 1 50); do
        munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return
        sleep 0.2
    done
    die "munged did not answer within 10 s; $(tail -n 20 "$STATE/log/munged.log" 2>/dev/null)"
}

check_conf_ownership() {
    local f
    for f in "$CONF_DIR/slurm.conf" "$CONF_DIR/gres.conf"; do
        if [ -e "$f" ] && ! grep -qF "$MARKER" "$f"; then
            die "$f exists and was not written by this script; refusing to overwrite a real cluster's config"
        fi
    done
}

write_conf() {
    local host node_line mem
    host=$(hostname -s)
    # `slurmd -C` prints this machine's NodeName line; lower RealMemory ~5 % so the node is not drained
    # for having less memory than configured.
    node_line=$(slurmd -C | head -n 1)
    mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$node_line")
    node_line=$(sed "s/RealMemory=[0-9]*/RealMemory=$((mem * 95 / 100))/" <<<"$node_line")
    mkdir -p "$CONF_DIR"
    cat >"$CONF_DIR/slurm.conf" <<CONF
$MARKER
ClusterName=lossablation-ci
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/state
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
# no cgroups: the sandbox refuses device cgroup writes
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# without a default, a job with no --mem takes the whole node and jobs run one at a time
DefMemPerCPU=1000
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
# finished jobs stay visible to squeue for 300 s; the profile's status checks rely on it
MinJobAge=300
MailProg=/bin/true
ReturnToService=2
KillWait=5
InactiveLimit=0
GresTypes=gpu
$node_line Gres=gpu:$N_GPUS State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
    {
        echo "$MARKER"
        echo "AutoDetect=off"
        echo "NodeName=$(sed -n 's/^NodeName=\([^ ]*\).*/\1/p' <<<"$node_line") Name=gpu File=$STATE/dev/gpu[0-$((N_GPUS - 1))]"
    } >"$CONF_DIR/gres.conf"
}

make_fake_gpus() {
    # Fake GPUs must be CHARACTER devices (clones of /dev/null); count-only or regular-file GPUs are dropped
    # by slurmd and the node drains.
    local i
    mkdir -p "$STATE/dev"
    for i in $(seq 0 $((N_GPUS - 1))); do
        mknod -m 666 "$STATE/dev/gpu$i" c 1 3
    done
}

log_tails() {
    local f
    for f in slurmctld slurmd; do
        echo "---- $STATE/log/$f.log (last 25 lines)"
        tail -n 25 "$STATE/log/$f.log" 2>/dev/null || echo "(missing)"
    done
}

wait_idle() {
    local deadline=$((SECONDS + WAIT_S)) st=""
    while [ $SECONDS -lt $deadline ]; do
        pid_alive slurmctld || die "slurmctld exited during startup
$(log_tails)"
        pid_alive slurmd || die "slurmd exited during startup
$(log_tails)"
        st=$(sinfo -h -N -o %T 2>/dev/null | head -n 1 || true)
        case "$st" in
            idle) return 0 ;;
            drain*|down*|fail*)
                die "node is '$st': $(scontrol show node 2>/dev/null | grep -o 'Reason=.*')
$(log_tails)" ;;
        esac
        sleep 0.5
    done
    die "node not idle after ${WAIT_S} s (last state: '${st:-none}')
$(log_tails)"
}

do_start() {
    need_root
    local t0=$SECONDS
    install_packages
    check_conf_ownership
    # a clean start every time: stop what an earlier start left running, then wipe its state
    if [ -d "$STATE/pids" ]; then do_stop; fi
    rm -rf "$STATE"
    mkdir -p "$STATE"/{pids,state,spool,run,log}
    start_munge
    write_conf
    make_fake_gpus
    start_detached slurmctld "$STATE/log/slurmctld.stdout" slurmctld -D -i
    start_detached slurmd "$STATE/log/slurmd.stdout" slurmd -D -N "$(hostname -s)"
    wait_idle
    log "cluster up in $((SECONDS - t0)) s: node $(hostname -s) idle, partition $PARTITION, $N_GPUS fake GPUs;" \
        "pids: $(for d in "${DAEMONS[@]}"; do [ -s "$STATE/pids/$d.pid" ] && printf '%s=%s ' "$d" "$(cat "$STATE/pids/$d.pid")"; done)"
}

do_status() {
    local d
    for d in "${DAEMONS[@]}"; do
        if pid_alive "$d"; then echo "$d: running (pid $(cat "$STATE/pids/$d.pid"))"; else echo "$d: not running"; fi
    done
    if pid_alive slurmctld; then sinfo -N -o '%N %T %G %c %m' || true; fi
}

case "${1:-}" in
    start) do_start ;;
    stop) need_root; t0=$SECONDS; do_stop; log "stop took $((SECONDS - t0)) s" ;;
    status) do_status ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
