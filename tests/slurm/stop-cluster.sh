#!/usr/bin/env bash
# Stop the test cluster of tests/slurm/start-cluster.sh: cancel its jobs, stop slurmd and
# slurmctld, kill job processes that outlived their job, stop munged when start-cluster.sh started
# it, and remove the /etc/slurm/{slurm,gres}.conf it wrote. Safe to run when nothing is running.
# Processes are found by pid only: the daemons' pid files, and job processes by the cluster name in
# their environment.
# Environment: PHYSFM_SLURM_DIR (default /tmp/physfm-slurm), as for start-cluster.sh.
set -uo pipefail

D=${PHYSFM_SLURM_DIR:-/tmp/physfm-slurm}
CONF=/etc/slurm/slurm.conf
MARK="# Single-node test cluster written by tests/slurm/start-cluster.sh"

log() { echo "stop-cluster: $*" >&2; }
alive() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2> /dev/null; }

# Stop one daemon by its pid file: TERM, then KILL after $2 seconds.
stop_pidfile() {
    local pidfile=$1 grace=$2 name pid
    name=$(basename "$pidfile" .pid)
    alive "$pidfile" || { rm -f "$pidfile"; return 0; }
    pid=$(cat "$pidfile")
    kill -TERM "$pid" 2> /dev/null || true
    for _ in $(seq $((grace * 5))); do
        kill -0 "$pid" 2> /dev/null || break
        sleep 0.2
    done
    if kill -0 "$pid" 2> /dev/null; then
        log "$name ($pid) ignored SIGTERM for ${grace}s: SIGKILL"
        kill -KILL "$pid" 2> /dev/null || true
    fi
    rm -f "$pidfile"
    log "stopped $name ($pid)"
}

# tests/test_slurm.py holds this lock while its cluster runs (and sets PHYSFM_SLURM_LOCKED=1 for the
# scripts it calls): do not start or stop the cluster under a running test session.
if [[ ${PHYSFM_SLURM_LOCKED:-0} != 1 ]]; then
    exec 9>> /tmp/physfm-slurm.lock
    if ! flock -n 9; then
        log "a test session (tests/test_slurm.py) is using the cluster; wait for it to finish"
        exit 4
    fi
fi

if [[ -f $CONF ]] && alive "$D/run/slurmctld.pid"; then
    # Cancel every job of this cluster and wait (up to 30 s) until their steps are gone, so no
    # slurmstepd or job process outlives the daemons.
    jobs=$(squeue -h -o %i 2> /dev/null | tr '\n' ' ')
    if [[ -n ${jobs// /} ]]; then
        log "cancelling jobs: $jobs"
        # shellcheck disable=SC2086
        scancel $jobs 2> /dev/null || true
        for _ in $(seq 60); do
            [[ -z $(squeue -h -t running,completing,suspended -o %i 2> /dev/null) ]] && break
            sleep 0.5
        done
    fi
fi

stop_pidfile "$D/run/slurmd.pid" 15
stop_pidfile "$D/run/slurmctld.pid" 15

# Job processes that outlived their job: proctrack/linuxproc follows parent links, so a process whose
# parent died escapes it. They carry this cluster's name in their environment; those started since
# this cluster was started are its jobs' (found by pid, never by command name).
if [[ -s $D/run/cluster.started ]]; then
    since=$(cat "$D/run/cluster.started")
    now=$(date +%s)
    left=()
    for f in $(grep -lzxs "SLURM_CLUSTER_NAME=physfm-test" /proc/[0-9]*/environ); do
        pid=${f#/proc/}
        pid=${pid%/environ}
        [[ $pid == "$$" ]] && continue
        age=$(ps -o etimes= -p "$pid") || continue
        ((now - age >= since)) && left+=("$pid")
    done
    if ((${#left[@]})); then
        log "killing job processes left behind: ${left[*]}"
        kill -TERM "${left[@]}" 2> /dev/null
        sleep 2
        kill -KILL "${left[@]}" 2> /dev/null
    fi
    rm -f "$D/run/cluster.started"
fi

for f in "$CONF" /etc/slurm/gres.conf; do
    [[ -f $f ]] && grep -qF "$MARK" "$f" && rm -f "$f"
done

if [[ -f $D/run/munged.started ]]; then
    if [[ -s /run/munge/munged.pid ]] && kill -0 "$(cat /run/munge/munged.pid)" 2> /dev/null; then
        stop_pidfile /run/munge/munged.pid 5
    fi
    rm -f "$D/run/munged.started"
fi
exit 0
