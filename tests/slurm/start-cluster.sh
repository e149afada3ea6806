#!/usr/bin/env bash
# Start a real single-node SLURM cluster on this host, for tests/test_slurm.py and for trying the
# SLURM profile by hand. Run as root on Debian/Ubuntu:
#
#   tests/slurm/start-cluster.sh            # installs slurm-wlm + munge if missing, starts daemons
#   sinfo; squeue; sbatch ...                # the config is /etc/slurm/slurm.conf (+ gres.conf)
#   tests/slurm/stop-cluster.sh             # cancels jobs, stops slurmd, slurmctld, munged
#
# The cluster: one node (this host; at least 8 CPUs and 32 GB declared, more than CI hosts have),
# partitions `cpu` (default) and `gpu`, 4 fake GPUs (character devices made with mknod, in gres.conf)
# so `--gpus=1` is accepted and SLURM sets CUDA_VISIBLE_DEVICES. No systemd, no cgroups
# (proctrack/linuxproc, task/none), no slurmdbd (so `sacct` does not work: use squeue, which keeps
# finished jobs for MinJobAge=3600 s). Idempotent: a running cluster with the same config is reused.
# The config must sit at the default /etc/slurm/slurm.conf: Snakemake's job-step executor strips
# SLURM_* variables (SLURM_CONF included) before its nested srun. An existing slurm.conf that this
# script did not write is never overwritten (exit 3).
#
# Environment: PHYSFM_SLURM_DIR (default /tmp/physfm-slurm) holds state, logs, pid files, devices;
# PHYSFM_SLURMCTLD_PORT / PHYSFM_SLURMD_PORT (default 6817 / 6818); PHYSFM_SLURM_CPUS (default: the
# host's, at least 8); PHYSFM_SLURM_GPUS (default 4).
# Exit status: 0 ready, 1 daemons failed to come up, 3 SLURM cannot be installed here, 4 a test
# session holds /tmp/physfm-slurm.lock.
set -euo pipefail

D=${PHYSFM_SLURM_DIR:-/tmp/physfm-slurm}
CTLD_PORT=${PHYSFM_SLURMCTLD_PORT:-6817}
SLURMD_PORT=${PHYSFM_SLURMD_PORT:-6818}
N_GPUS=${PHYSFM_SLURM_GPUS:-4}
NODE=$(hostname -s)
ETC=/etc/slurm
CONF=$ETC/slurm.conf
MARK="# Single-node test cluster written by tests/slurm/start-cluster.sh"

log() { echo "start-cluster: $*" >&2; }

# tests/test_slurm.py holds this lock while its cluster runs (and sets PHYSFM_SLURM_LOCKED=1 for the
# scripts it calls): do not start or stop the cluster under a running test session.
if [[ ${PHYSFM_SLURM_LOCKED:-0} != 1 ]]; then
    exec 9>> /tmp/physfm-slurm.lock
    if ! flock -n 9; then
        log "a test session (tests/test_slurm.py) is using the cluster; wait for it to finish"
        exit 4
    fi
fi

if [[ $(id -u) != 0 ]]; then
    log "must run as root (it installs packages and starts slurmctld/slurmd as root)"
    exit 3
fi

# --- 1. packages ----------------------------------------------------------------------------
missing=()
for tool in munged slurmctld slurmd sbatch; do
    command -v "$tool" > /dev/null || missing+=("$tool")
done
if ((${#missing[@]})); then
    if ! command -v apt-get > /dev/null; then
        log "missing ${missing[*]} and no apt-get: install slurm-wlm and munge by hand"
        exit 3
    fi
    log "installing slurm-wlm and munge (missing: ${missing[*]})"
    export DEBIAN_FRONTEND=noninteractive
    # Another process may hold the dpkg lock (unattended upgrades, other jobs): wait for it.
    apt_opts=(-o DPkg::Lock::Timeout=600 -q)
    if ! { apt-get "${apt_opts[@]}" update > "/tmp/physfm-slurm-apt.log" 2>&1 &&
        apt-get "${apt_opts[@]}" install -y --no-install-recommends slurm-wlm munge \
            >> "/tmp/physfm-slurm-apt.log" 2>&1; }; then
        log "apt-get could not install slurm-wlm and munge; see /tmp/physfm-slurm-apt.log"
        tail -5 /tmp/physfm-slurm-apt.log >&2 || true
        exit 3
    fi
fi

mkdir -p "$D"/{state,spool,log,run,dev} "$ETC"
if [[ -f $CONF ]] && ! grep -qF "$MARK" "$CONF"; then
    log "$CONF exists and was not written by this script: refusing to replace a real SLURM config"
    exit 3
fi

# --- 2. munge -------------------------------------------------------------------------------
if ! munge -n 2> /dev/null | unmunge > /dev/null 2>&1; then
    if [[ ! -s /etc/munge/munge.key ]]; then
        log "creating /etc/munge/munge.key"
        mkdir -p /etc/munge
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
    fi
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /etc/munge /etc/munge/munge.key /run/munge /var/log/munge /var/lib/munge
    chmod 0700 /etc/munge /var/log/munge /var/lib/munge
    chmod 0400 /etc/munge/munge.key
    chmod 0755 /run/munge
    log "starting munged"
    runuser -u munge -- /usr/sbin/munged --force 9>&- # daemons must not inherit the lock
    touch "$D/run/munged.started" # stop-cluster.sh stops munged only if we started it
    for _ in $(seq 50); do
        munge -n 2> /dev/null | unmunge > /dev/null 2>&1 && break
        sleep 0.2
    done
    if ! munge -n | unmunge > /dev/null; then
        log "munged did not come up (see /var/log/munge/munged.log)"
        exit 1
    fi
fi

# --- 3. config ------------------------------------------------------------------------------
# CPUs: at least 8, more than a 2-core CI host has: the smoke study's jobs are small and spend most
# of their time starting up, so letting several run side by side shortens the test (nothing pins
# them to cores: task/none).
ncpu=${PHYSFM_SLURM_CPUS:-$(($(nproc) > 8 ? $(nproc) : 8))}
# Memory: 80% of this host's, but at least 32 GB, so that rules asking for the study config's
# mem_mb fit on small CI machines too (nothing enforces it here: task/none, no cgroups).
mem_mb=$(awk '/MemTotal/ {m = $2 / 1024 * 0.8; if (m < 32000) m = 32000; printf "%d", m}' /proc/meminfo)
for i in $(seq 0 $((N_GPUS - 1))); do
    # Fake GPUs: character devices with the NVIDIA major number (nothing ever opens them); where
    # mknod is not permitted (containers without CAP_MKNOD), a symlink to /dev/null, which SLURM
    # accepts as well (it must be a character device; a plain file gets no CUDA_VISIBLE_DEVICES).
    if [[ ! -c $D/dev/fakegpu$i ]]; then
        rm -f "$D/dev/fakegpu$i"
        mknod "$D/dev/fakegpu$i" c 195 "$i" 2> /dev/null || ln -s /dev/null "$D/dev/fakegpu$i"
    fi
done

new_conf=$(mktemp)
cat > "$new_conf" << EOF
$MARK; regenerated on each start.
ClusterName=physfm-test
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$D/state
SlurmdSpoolDir=$D/spool
SlurmctldPidFile=$D/run/slurmctld.pid
SlurmdPidFile=$D/run/slurmd.pid
SlurmctldLogFile=$D/log/slurmctld.log
SlurmdLogFile=$D/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No systemd, no cgroups: track job processes through /proc, no CPU binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
# No slurmdbd: sacct cannot work; squeue shows finished jobs for MinJobAge seconds. An hour, not the default
# 300 s: when `scontrol show config` times out under load (10 s), the executor plugin (2.8) falls back to sacct
# for that poll, which sees nothing; with 300 s a job that finished meanwhile could leave squeue before the next
# poll (up to 180 s later) and the run would wait for it forever (seen in session 8 with 7 jobs on 2 cores).
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MinJobAge=3600
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Trust the CPUs/memory below even where they differ from what slurmd detects.
SlurmdParameters=config_overrides
ReturnToService=2
MpiDefault=none
SwitchType=switch/none
KillWait=10
InactiveLimit=0
Waittime=0
JobRequeue=1
GresTypes=gpu
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$ncpu RealMemory=$mem_mb Gres=gpu:$N_GPUS State=UNKNOWN
PartitionName=cpu Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$NODE MaxTime=INFINITE State=UP
EOF
new_gres=$(mktemp)
cat > "$new_gres" << EOF
$MARK
AutoDetect=off
NodeName=$NODE Name=gpu File=$D/dev/fakegpu[0-$((N_GPUS - 1))]
EOF

alive() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2> /dev/null; }

changed=0
cmp -s "$new_conf" "$CONF" || changed=1
cmp -s "$new_gres" "$ETC/gres.conf" || changed=1
if ((changed)); then
    if alive "$D/run/slurmctld.pid" || alive "$D/run/slurmd.pid"; then
        log "configuration changed: restarting the cluster"
        PHYSFM_SLURM_LOCKED=1 "$(dirname "$0")/stop-cluster.sh"
    fi
    mv "$new_conf" "$CONF"
    mv "$new_gres" "$ETC/gres.conf"
    chmod 0644 "$CONF" "$ETC/gres.conf"
else
    rm -f "$new_conf" "$new_gres"
fi

# --- 4. daemons -----------------------------------------------------------------------------
if ! alive "$D/run/slurmctld.pid"; then
    log "starting slurmctld (log $D/log/slurmctld.log)"
    # -c: start clean (no jobs from an earlier run); -i: ignore state files' errors.
    slurmctld -f "$CONF" -c -i 9>&-
    date +%s > "$D/run/cluster.started" # stop-cluster.sh: job processes younger than this are ours
fi
if ! alive "$D/run/slurmd.pid"; then
    log "starting slurmd (log $D/log/slurmd.log)"
    slurmd -f "$CONF" 9>&-
fi

# --- 5. wait for the node -------------------------------------------------------------------
state=""
for i in $(seq 120); do
    state=$(sinfo -h -n "$NODE" -p cpu -o %T 2> /dev/null | head -1 || true)
    case "$state" in
        idle | mixed | allocated | completing) break ;;
        down* | drain* | fail*)
            ((i % 10 == 0)) && scontrol update NodeName="$NODE" State=RESUME 2> /dev/null || true
            ;;
    esac
    sleep 0.5
done
case "$state" in
    idle | mixed | allocated | completing) ;;
    *)
        log "node $NODE is '${state:-unreachable}' after 60 s; last daemon log lines:"
        tail -n 15 "$D/log/slurmctld.log" "$D/log/slurmd.log" >&2 || true
        exit 1
        ;;
esac
log "cluster ready: node $NODE ($ncpu CPUs, $mem_mb MB, $N_GPUS fake GPUs) is $state"
