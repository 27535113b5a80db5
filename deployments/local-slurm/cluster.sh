#!/usr/bin/env bash
# A real, throw-away Slurm cluster on this host (Debian's Slurm 22.05 + munge).
#
#   cluster.sh start DIR    start it; the last stdout line is `export SLURM_CONF=DIR/slurm.conf`
#   cluster.sh stop DIR     stop exactly what `start DIR` started (idempotent)
#   cluster.sh status DIR   show daemons, `scontrol ping` and `sinfo`
#
# Layout: partition `compute` (default) = c1..c3 with CPUs=2 each, partition `quantum` = q1
# with CPUs=4 and Gres=qpu:4 (virtual QPUs; a job sees its index in `scontrol show job -d`).
# Every node is its own slurmd on 127.0.0.1 (multiple-slurmd build). Configuration, logs, pid
# files, keys and the jobcomp file live in DIR; spool, state and the munge socket live in a short
# /tmp/qflow-slurm-XXXXXX directory (unix socket paths must stay under 108 characters)
# whose path is recorded in DIR/tmpdir. Ports are derived from a hash of DIR and checked
# to be free, so several clusters can run side by side. Needs root.
set -euo pipefail

PROG=$(basename "$0")
START_TIMEOUT=${QFLOW_SLURM_START_TIMEOUT:-30}

die() {
    echo "$PROG: $*" >&2
    exit 1
}
log() { echo "$PROG: $*" >&2; }

usage() {
    echo "usage: $PROG start|stop|status DIR" >&2
    exit 2
}

[ $# -eq 2 ] || usage
CMD=$1
DIR=$2
case $CMD in start | stop | status) ;; *) usage ;; esac

if [ "$CMD" = start ]; then
    mkdir -p "$DIR"
fi
if [ ! -d "$DIR" ]; then
    [ "$CMD" = stop ] && exit 0
    die "no such directory: $DIR"
fi
DIR=$(cd "$DIR" && pwd -P)
CONF=$DIR/slurm.conf
NODES=(c1 c2 c3 q1)

alive() { # alive PIDFILE -> prints the pid and returns 0 when that process runs
    local f=$1 pid
    [ -s "$f" ] || return 1
    pid=$(tr -dc '0-9' <"$f")
    [ -n "$pid" ] && running "$pid" || return 1
    echo "$pid"
}

tag_of() { cat "$DIR/tag" 2>/dev/null || true; }

# The processes of this cluster, one line "KIND PID" each (KIND: slurmstepd, slurmd, daemon,
# job). Daemons carry QFLOW_SLURM_TAG=<tag> in their environment; slurmd starts its
# slurmstepds with an empty environment, but they keep slurmd's working directory (DIR/log).
# Only processes named slurm*/munged count as daemons (not, say, a `tail -f` of a log). Job
# processes that escaped their slurmstepd (reparented to init) still carry a SLURM_JOB_ID and
# this cluster's SLURM_CONF. Builtins only: one pass over /proc costs no fork per process.
scan() {
    local tag=$1 p comm e hit job conf
    local -a envs
    for p in /proc/[0-9]*; do
        p=${p#/proc/}
        [ "$p" = $$ ] && continue
        comm=""
        { read -r comm <"/proc/$p/comm"; } 2>/dev/null || continue
        envs=()
        { mapfile -d '' envs <"/proc/$p/environ"; } 2>/dev/null || true
        case $comm in
        slurm* | munged)
            hit=0
            if [ "/proc/$p/cwd" -ef "$DIR/log" ]; then
                hit=1
            else
                for e in "${envs[@]}"; do
                    if [ -n "$tag" ] && [ "$e" = "QFLOW_SLURM_TAG=$tag" ]; then
                        hit=1
                        break
                    fi
                done
            fi
            if [ $hit = 1 ]; then
                case $comm in
                slurmstepd | slurmd) echo "$comm $p" ;;
                *) echo "daemon $p" ;;
                esac
                continue
            fi
            ;;
        esac
        job=0 conf=0
        for e in "${envs[@]}"; do
            case $e in
            SLURM_JOB_ID=*) job=1 ;;
            "SLURM_CONF=$CONF") conf=1 ;;
            esac
        done
        if [ $job = 1 ] && [ $conf = 1 ]; then echo "job $p"; fi
    done
}

descendants() { # descendants PID... -> the pids and all their descendants
    local -A kids=()
    local p ppid stat
    for p in /proc/[0-9]*; do
        { read -r stat <"$p/stat"; } 2>/dev/null || continue
        stat=${stat##*) } # "S PPID ..." after the command name
        ppid=${stat#* }
        ppid=${ppid%% *}
        kids[$ppid]="${kids[$ppid]:-} ${p#/proc/}"
    done
    local queue=("$@") out=() cur
    while [ ${#queue[@]} -gt 0 ]; do
        cur=${queue[0]}
        queue=("${queue[@]:1}")
        out+=("$cur")
        # shellcheck disable=SC2206
        [ -n "${kids[$cur]:-}" ] && queue+=(${kids[$cur]})
    done
    echo "${out[@]}"
}

running() { # running PID -> 0 when that process exists and is not a zombie
    local st
    { read -r st <"/proc/$1/stat"; } 2>/dev/null || return 1
    st=${st##*) }
    [ "${st:0:1}" != Z ]
}

kill_wait() { # kill_wait SECONDS PID... : SIGTERM, wait, then SIGKILL what is left
    local secs=$1
    shift
    [ $# -gt 0 ] || return 0
    local i left=("$@")
    if [ "$secs" -gt 0 ]; then kill -TERM "$@" 2>/dev/null || true; fi
    for ((i = 0; i < secs * 20; i++)); do
        left=()
        for p in "$@"; do running "$p" && left+=("$p"); done
        [ ${#left[@]} -eq 0 ] && return 0
        sleep 0.05
    done
    [ -n "${QFLOW_SLURM_DEBUG:-}" ] && echo "SIGKILL after ${secs}s: ${left[*]}" >&2
    kill -KILL "${left[@]}" 2>/dev/null || true
    for ((i = 0; i < 40; i++)); do
        left=()
        for p in "$@"; do running "$p" && left+=("$p"); done
        [ ${#left[@]} -eq 0 ] && return 0
        sleep 0.05
    done
}

do_stop() {
    local tag tmp kind p ctld munged stepds=() slurmds=() rest=()
    tag=$(tag_of)
    tmp=$(cat "$DIR/tmpdir" 2>/dev/null || true)
    ctld=$(alive "$DIR/slurmctld.pid") || ctld=""
    munged=$(alive "$DIR/munged.pid") || munged=""
    # The cluster is thrown away, so its jobs are not cancelled through the controller.
    # slurmstepd ignores SIGTERM: SIGKILL the step daemons with their process trees (the job
    # processes, and any that escaped) at once; then the slurmds (they exit on SIGTERM within
    # milliseconds while the controller still answers), then the controller, then munged;
    # SIGKILL after 3 s.
    while read -r kind p; do
        case $kind in
        slurmstepd | job) stepds+=("$p") ;;
        slurmd) slurmds+=("$p") ;;
        esac
    done < <(scan "$tag")
    if [ ${#stepds[@]} -gt 0 ]; then
        # shellcheck disable=SC2046
        kill_wait 0 $(descendants "${stepds[@]}")
    fi
    if [ ${#slurmds[@]} -gt 0 ]; then
        # shellcheck disable=SC2046
        kill_wait 3 $(descendants "${slurmds[@]}")
    fi
    # shellcheck disable=SC2046
    [ -n "$ctld" ] && kill_wait 3 $(descendants "$ctld")
    [ -n "$munged" ] && kill_wait 3 "$munged"
    # anything left over (a daemon whose pid file was lost, a process forked meanwhile)
    while read -r kind p; do [ -n "$p" ] && rest+=("$p"); done < <(scan "$tag")
    # shellcheck disable=SC2046
    [ ${#rest[@]} -gt 0 ] && kill_wait 2 $(descendants "${rest[@]}")
    rm -f "$DIR"/slurmd-*.pid "$DIR/slurmctld.pid" "$DIR/munged.pid"
    case $tmp in
    /tmp/qflow-slurm-*) rm -rf "$tmp" ;;
    esac
    rm -f "$DIR/tmpdir"
    return 0
}

port_in_use() { # port_in_use PORT -> 0 when some socket is bound to it (tcp or tcp6)
    local hex
    hex=$(printf '%04X' "$1")
    awk -v h=":$hex" 'NR > 1 && substr($2, length($2) - 4) == h { found = 1 } END { exit !found }' \
        /proc/net/tcp /proc/net/tcp6 2>/dev/null
}

pick_ports() { # prints 5 free consecutive ports derived from a hash of DIR
    local h base try p ok
    h=$(printf '%s' "$DIR" | cksum | cut -d' ' -f1)
    for ((try = 0; try < 200; try++)); do
        base=$((20000 + ((h + try * 7919) % 3000) * 10))
        ok=1
        for ((p = base; p < base + 5; p++)); do
            if port_in_use "$p"; then
                ok=0
                break
            fi
        done
        if [ $ok = 1 ]; then
            echo "$base"
            return 0
        fi
    done
    return 1
}

ensure_packages() {
    local missing=0 b
    for b in slurmctld slurmd sbatch munged mungekey; do
        command -v "$b" >/dev/null 2>&1 || [ -x "/usr/sbin/$b" ] || missing=1
    done
    [ $missing = 0 ] && return 0
    command -v apt-get >/dev/null 2>&1 || die "Slurm is not installed and apt-get is missing"
    log "installing slurmctld slurmd slurm-client munge with apt-get"
    # one apt-get at a time on this host (qflow/testing/debian.py takes the same lock)
    mkdir -p /var/lock
    DEBIAN_FRONTEND=noninteractive flock /var/lock/qflow-apt.lock sh -c '
        apt-get -o DPkg::Lock::Timeout=600 update &&
            apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends \
                slurmctld slurmd slurm-client munge' >"$DIR/apt.log" 2>&1 || {
        tail -n 20 "$DIR/apt.log" >&2
        die "apt-get install failed (log: $DIR/apt.log)"
    }
}

fail_start() {
    local msg=$1 f
    log "$msg"
    for f in "$DIR/log/slurmctld.log" "$DIR/log/munged.log" "$DIR"/log/slurmd-*.log; do
        [ -s "$f" ] || continue
        echo "--- tail of $f" >&2
        tail -n 15 "$f" >&2
    done
    do_stop
    exit 1
}

do_start() {
    [ "$(id -u)" = 0 ] || die "must run as root (slurmd and munged run as root here)"
    local p
    for f in "$DIR/munged.pid" "$DIR/slurmctld.pid" "$DIR"/slurmd-*.pid; do
        if p=$(alive "$f"); then
            die "a cluster already runs on $DIR (pid $p from $f); run '$PROG stop $DIR' first"
        fi
    done
    # stale leftovers of a crashed run
    do_stop
    ensure_packages
    PATH=$PATH:/usr/sbin:/sbin

    local tmp tag base ctldport
    tmp=$(mktemp -d /tmp/qflow-slurm-XXXXXX)
    chmod 755 "$tmp"
    echo "$tmp" >"$DIR/tmpdir"
    tag=$(basename "$tmp")
    echo "$tag" >"$DIR/tag"
    base=$(pick_ports) || fail_start "no free port range found"
    ctldport=$base
    mkdir -p "$DIR/log" "$DIR/dev" "$tmp/state" "$tmp/spool" "$tmp/munge"
    chmod 755 "$tmp/munge"
    : >"$DIR/jobcomp.txt"
    for i in 0 1 2 3; do : >"$DIR/dev/qpu$i"; done

    # munge: own key, own socket (every directory on the socket path world-executable)
    mkdir -p "$DIR/munge"
    chmod 700 "$DIR/munge"
    [ -s "$DIR/munge/munge.key" ] || mungekey --create --keyfile="$DIR/munge/munge.key"
    chmod 600 "$DIR/munge/munge.key"
    local sock=$tmp/munge/munge.sock
    QFLOW_SLURM_TAG=$tag munged --key-file="$DIR/munge/munge.key" --socket="$sock" \
        --pid-file="$DIR/munged.pid" --log-file="$DIR/log/munged.log" \
        --seed-file="$DIR/munge/munged.seed" --num-threads=4 ||
        fail_start "munged did not start"

    # q1 gets 4 CPUs so that its 4 virtual QPUs, not its CPUs, limit the jobs it runs
    local cpus=2 qcpus=4 mem=2048 host
    host=$(hostname -s)
    cat >"$CONF" <<EOF
# generated by $PROG for $DIR
ClusterName=qflow
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctldport
SlurmdPort=$((base + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$sock
CredType=cred/munge
StateSaveLocation=$tmp/state
SlurmdSpoolDir=$tmp/spool/%n
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd-%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
SlurmdParameters=config_overrides
# pgid, not linuxproc: linuxproc scans /proc for a job's processes and races with the batch
# script's first fork, so a job cancelled right at its start could leave its command running
ProctrackType=proctrack/pgid
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0,sched_interval=1,bf_interval=1
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/jobcomp.txt
MpiDefault=none
ReturnToService=2
KillWait=2
MinJobAge=300
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=30
MailProg=/bin/true
GresTypes=qpu
NodeName=c1 NodeHostname=localhost NodeAddr=127.0.0.1 Port=$((base + 1)) CPUs=$cpus RealMemory=$mem State=UNKNOWN
NodeName=c2 NodeHostname=localhost NodeAddr=127.0.0.1 Port=$((base + 2)) CPUs=$cpus RealMemory=$mem State=UNKNOWN
NodeName=c3 NodeHostname=localhost NodeAddr=127.0.0.1 Port=$((base + 3)) CPUs=$cpus RealMemory=$mem State=UNKNOWN
NodeName=q1 NodeHostname=localhost NodeAddr=127.0.0.1 Port=$((base + 4)) CPUs=$qcpus RealMemory=$mem Gres=qpu:4 State=UNKNOWN
PartitionName=compute Nodes=c1,c2,c3 Default=YES MaxTime=INFINITE State=UP
PartitionName=quantum Nodes=q1 MaxTime=INFINITE State=UP
EOF
    cat >"$DIR/gres.conf" <<EOF
NodeName=q1 Name=qpu File=$DIR/dev/qpu[0-3]
EOF
    # slurmd reads cgroup.conf next to slurm.conf when present; none is needed here
    export SLURM_CONF=$CONF

    QFLOW_SLURM_TAG=$tag slurmctld -i -f "$CONF" >>"$DIR/log/slurmctld.out" 2>&1 ||
        fail_start "slurmctld exited with an error"
    local deadline=$((SECONDS + START_TIMEOUT)) up=0
    while [ $SECONDS -lt $deadline ]; do
        if scontrol ping 2>/dev/null | grep -q "is UP"; then
            up=1
            break
        fi
        alive "$DIR/slurmctld.pid" >/dev/null || [ ! -s "$DIR/slurmctld.pid" ] ||
            fail_start "slurmctld died while starting"
        sleep 0.05
    done
    [ $up = 1 ] || fail_start "slurmctld did not answer 'scontrol ping' within ${START_TIMEOUT}s"

    for n in "${NODES[@]}"; do
        QFLOW_SLURM_TAG=$tag slurmd -N "$n" -f "$CONF" >>"$DIR/log/slurmd-$n.out" 2>&1 ||
            fail_start "slurmd $n exited with an error"
    done
    local states
    while [ $SECONDS -lt $deadline ]; do
        states=$(sinfo -h -N -o '%N %t' 2>/dev/null | sort -u)
        if [ "$(echo "$states" | grep -c ' idle$')" = ${#NODES[@]} ]; then
            echo "Slurm cluster up: $DIR (ports $base-$((base + 4)), spool $tmp)" >&2
            echo "export SLURM_CONF=$CONF"
            return 0
        fi
        alive "$DIR/slurmctld.pid" >/dev/null || fail_start "slurmctld died while starting"
        sleep 0.05
    done
    fail_start "nodes not idle within ${START_TIMEOUT}s: $(echo "$states" | tr '\n' ' ')"
}

do_status() {
    local f p rc=0
    for f in "$DIR/munged.pid" "$DIR/slurmctld.pid" "$DIR"/slurmd-*.pid; do
        [ -e "$f" ] || continue
        if p=$(alive "$f"); then
            echo "$(basename "$f" .pid): running (pid $p)"
        else
            echo "$(basename "$f" .pid): not running"
            rc=1
        fi
    done
    [ -e "$DIR/slurmctld.pid" ] || {
        echo "no cluster started on $DIR"
        return 3
    }
    export SLURM_CONF=$CONF
    scontrol ping || rc=1
    sinfo || rc=1
    return $rc
}

case $CMD in
start) do_start ;;
stop) do_stop ;;
status) do_status ;;
esac
