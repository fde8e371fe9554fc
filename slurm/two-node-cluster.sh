#!/usr/bin/env bash
# two-node-cluster.sh -- a second SLURM cluster of two nodes (n1, n2) on this one machine, for real multi-node tests.
#
#   bash slurm/two-node-cluster.sh start    network namespaces, config, daemons, wait until both nodes are idle (idempotent)
#   bash slurm/two-node-cluster.sh stop     stop its daemons and delete its namespaces (exit 0 if not running)
#   bash slurm/two-node-cluster.sh status   daemons and sinfo; exit 0 only if both nodes are usable
#
# Each node is a network namespace (sslprune-n1, sslprune-n2) joined by a veth pair with loopback-range
# addresses only (127.0.1.1, 127.0.1.2), and its daemons run with their own hostname and hosts file
# (unshare --uts --mount). slurmctld and slurmd -N n1 run in sslprune-n1, slurmd -N n2 in sslprune-n2.
# A client talks to it from inside sslprune-n1 with SLURM_CONF set:
#
#   SLURM_CONF=/etc/slurm-two-node/slurm.conf nsenter --net=/run/netns/sslprune-n1 -- sinfo
#
# It shares munge and the packages with slurm/local-cluster.sh and nothing else (its own cluster name,
# ports, state, spool, pid and log files), so both clusters run side by side. No job accounting.
# Runs as root on Debian 12 without systemd.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
START_TIMEOUT="${SSLPRUNE_SLURM_TIMEOUT:-120}"
CLUSTER_NAME="sslprune2"
NODES=(n1 n2)
declare -A ADDR=([n1]=127.0.1.1 [n2]=127.0.1.2)
declare -A VETH=([n1]=sslp2-n1 [n2]=sslp2-n2)
NETNS_PREFIX=sslprune-   # /run/netns/sslprune-n1, /run/netns/sslprune-n2

CONF_DIR=/etc/slurm-two-node
SLURM_CONF="$CONF_DIR/slurm.conf"
HOSTS="$CONF_DIR/hosts"
LOG_DIR=/var/log/slurm
RUN_DIR=/run/slurm-two-node
CTLD_SPOOL=/var/spool/slurm-two-node/ctld
SLURMD_SPOOL=/var/spool/slurm-two-node   # slurmd's is $SLURMD_SPOOL/<node> (%n)
CTLD_PID="$RUN_DIR/slurmctld.pid"
CTLD_LOG="$LOG_DIR/two-node-slurmctld.log"

log() { echo "two-node-cluster: $*" >&2; }
die() { echo "two-node-cluster: ERROR: $*" >&2; exit 1; }

netns() { echo "/run/netns/$NETNS_PREFIX$1"; }
slurmd_pid() { echo "$RUN_DIR/slurmd-$1.pid"; }
slurmd_log() { echo "$LOG_DIR/two-node-slurmd-$1.log"; }

# client NODE COMMAND...: run a client command inside NODE's network namespace against this cluster.
client() {
    local node="$1"; shift
    SLURM_CONF="$SLURM_CONF" nsenter --net="$(netns "$node")" -- "$@"
}

# ---------------------------------------------------------------- helpers

# pid_of PIDFILE NAME NODE: the pid in PIDFILE if it is a live NAME inside NODE's network namespace
# (or, when that namespace was deleted under it, in any namespace but this script's own).
# Never a search by process name: the one-node cluster runs daemons of the same names.
pid_of() {
    local pidfile="$1" name="$2" node="$3" pid ns
    [[ -r "$pidfile" ]] || return 1
    pid="$(tr -dc '0-9' <"$pidfile" 2>/dev/null || true)"
    [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 1
    [[ "$(cat "/proc/$pid/comm" 2>/dev/null || true)" == "$name" ]] || return 1
    ns="$(stat -L -c %i "/proc/$pid/ns/net" 2>/dev/null)" || return 1
    if [[ -e "$(netns "$node")" ]]; then
        [[ "$ns" == "$(stat -L -c %i "$(netns "$node")")" ]] || return 1
    else
        [[ "$ns" != "$(stat -L -c %i /proc/self/ns/net)" ]] || return 1
    fi
    echo "$pid"
}

running() { pid_of "$@" >/dev/null; }

# stop_daemon PIDFILE NAME NODE: SIGTERM, wait up to 30 s, then SIGKILL.
stop_daemon() {
    local pidfile="$1" name="$2" node="$3" pid i
    if ! pid="$(pid_of "$pidfile" "$name" "$node")"; then
        rm -f "$pidfile"
        return 0
    fi
    log "stopping $name on $node (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 300; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "$name on $node did not stop in 30 s: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        sleep 0.5
    fi
    rm -f "$pidfile"
}

wait_for() {
    local secs="$1"; shift
    local deadline=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || return 1
        sleep 0.2
    done
}

fail_with_logs() {
    local msg="$1" f; shift
    echo "two-node-cluster: ERROR: $msg" >&2
    for f in "$@"; do
        if [[ -r "$f" ]]; then
            echo "two-node-cluster: ---- last lines of $f ----" >&2
            tail -n 15 "$f" >&2 || true
        fi
    done
    echo "two-node-cluster: logs: $LOG_DIR/two-node-*.log; config: $SLURM_CONF" >&2
    exit 1
}

# ---------------------------------------------------------------- network

# network_ok: both namespaces exist, each veth end is up with its address, lo is 127.0.0.1/32 and
# route_localnet is on (else the kernel keeps 127.0.1.x on lo and never uses the veth).
network_ok() {
    local n
    for n in "${NODES[@]}"; do
        [[ -e "$(netns "$n")" ]] || return 1
        ip -n "$NETNS_PREFIX$n" -o -4 addr show dev "${VETH[$n]}" 2>/dev/null | grep -q " ${ADDR[$n]}/24 " || return 1
        ip -n "$NETNS_PREFIX$n" -o link show dev "${VETH[$n]}" 2>/dev/null | grep -q ',UP' || return 1
        ip -n "$NETNS_PREFIX$n" -o -4 addr show dev lo 2>/dev/null | grep -q ' 127.0.0.1/32 ' || return 1
        [[ "$(nsenter --net="$(netns "$n")" -- sysctl -n net.ipv4.conf.all.route_localnet)" == 1 ]] || return 1
    done
}

delete_network() {
    local n
    for n in "${NODES[@]}"; do
        if [[ -e "$(netns "$n")" ]]; then
            ip netns delete "$NETNS_PREFIX$n" || die "ip netns delete $NETNS_PREFIX$n failed"
        fi
    done
}

make_network() {
    network_ok && return 0
    local n
    log "creating network namespaces ${NETNS_PREFIX}n1, ${NETNS_PREFIX}n2 (veth ${ADDR[n1]} <-> ${ADDR[n2]})"
    delete_network
    for n in "${NODES[@]}"; do
        ip netns add "$NETNS_PREFIX$n" || die "ip netns add $NETNS_PREFIX$n failed (is this root with network namespaces?)"
    done
    ip -n "${NETNS_PREFIX}n1" link add "${VETH[n1]}" type veth peer name "${VETH[n2]}" netns "${NETNS_PREFIX}n2" \
        || die "could not create the veth pair"
    for n in "${NODES[@]}"; do
        nsenter --net="$(netns "$n")" -- sysctl -q -w net.ipv4.conf.all.route_localnet=1 >/dev/null \
            || die "could not set route_localnet in $NETNS_PREFIX$n"
        ip -n "$NETNS_PREFIX$n" link set lo up
        ip -n "$NETNS_PREFIX$n" addr del 127.0.0.1/8 dev lo 2>/dev/null || true
        ip -n "$NETNS_PREFIX$n" addr replace 127.0.0.1/32 dev lo
        ip -n "$NETNS_PREFIX$n" addr add "${ADDR[$n]}/24" dev "${VETH[$n]}"
        ip -n "$NETNS_PREFIX$n" link set "${VETH[$n]}" up
    done
    network_ok || die "network namespaces created but not as expected: $(ip -n "${NETNS_PREFIX}n1" -o addr 2>&1 | tr '\n' ';')"
}

# ---------------------------------------------------------------- configs

write_if_changed() {
    local path="$1" mode="$2" content="$3" tmp
    if [[ -f "$path" ]] && [[ "$(cat "$path")" == "$content" ]]; then
        return 1
    fi
    tmp="$(mktemp "$path.XXXXXX")"
    printf '%s\n' "$content" >"$tmp"
    chmod "$mode" "$tmp"
    mv -f "$tmp" "$path"
    log "wrote $path"
    return 0
}

hosts_content() {
    cat <<EOF
# Generated by slurm/two-node-cluster.sh: /etc/hosts of the daemons (and jobs) of the two-node cluster.
127.0.0.1 localhost
${ADDR[n1]} n1
${ADDR[n2]} n2
EOF
}

slurm_conf_content() {
    cat <<EOF
# Generated by slurm/two-node-cluster.sh -- two-node test cluster in network namespaces. Edits are overwritten by 'start'.
ClusterName=$CLUSTER_NAME
SlurmctldHost=n1(${ADDR[n1]})
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
CryptoType=crypto/munge
MpiDefault=none
SwitchType=switch/none
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$RUN_DIR/slurmd-%n.pid
SlurmctldPort=6917
SlurmdPort=6918
StateSaveLocation=$CTLD_SPOOL
SlurmdSpoolDir=$SLURMD_SPOOL/%n
SlurmctldLogFile=$CTLD_LOG
SlurmdLogFile=$LOG_DIR/two-node-slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
SlurmdParameters=config_overrides
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=2,sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
PreemptType=preempt/none
JobRequeue=1
MinJobAge=300
KillWait=5
MaxArraySize=1001
InactiveLimit=0
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
NodeName=n1 NodeAddr=${ADDR[n1]} NodeHostname=n1 CPUs=4 RealMemory=1024 State=UNKNOWN
NodeName=n2 NodeAddr=${ADDR[n2]} NodeHostname=n2 CPUs=4 RealMemory=1024 State=UNKNOWN
PartitionName=two Nodes=n1,n2 Default=YES MaxTime=INFINITE State=UP
EOF
}

make_dirs() {
    mkdir -p "$CONF_DIR" "$LOG_DIR" "$RUN_DIR" "$CTLD_SPOOL" "$SLURMD_SPOOL/n1" "$SLURMD_SPOOL/n2"
    chmod 700 "$CTLD_SPOOL"
}

# ---------------------------------------------------------------- daemons

# on_node NODE SCRIPT: run SCRIPT (sh) as node NODE: its network namespace, its hostname, its hosts file.
# The mount namespace is private, so the bind mount over /etc/hosts is seen by this node's daemons
# and the jobs they start, nobody else.
on_node() {
    local node="$1" script="$2"
    nsenter --net="$(netns "$node")" -- unshare --uts --mount --propagation private -- \
        env SLURM_CONF="$SLURM_CONF" NODE="$node" HOSTS="$HOSTS" sh -ec "hostname \"\$NODE\"; mount --bind \"\$HOSTS\" /etc/hosts; $script" \
        </dev/null 9>&-
}

node_state() { client n1 sinfo -h -N -n "$1" -o '%T' 2>/dev/null | head -1; }

wait_nodes() {
    local deadline=$((SECONDS + START_TIMEOUT)) n st ready resumed=0
    while :; do
        ready=1
        for n in "${NODES[@]}"; do
            st="$(node_state "$n")"
            case "$st" in
                idle | mixed | allocated | completing) ;;
                *drain* | down | fail | failing | inval)
                    ready=0
                    if ((resumed < 6)); then
                        log "node $n is '$st' (reason: $(client n1 sinfo -h -N -n "$n" -o '%E' 2>/dev/null)); resuming it"
                        client n1 scontrol update nodename="$n" state=resume >&2 || true
                        resumed=$((resumed + 1))
                    fi
                    ;;
                *) ready=0 ;;
            esac
        done
        ((ready)) && return 0
        ((SECONDS < deadline)) || fail_with_logs "nodes not usable after ${START_TIMEOUT} s ($(client n1 sinfo -h -N -o '%N=%T' 2>&1 | tr '\n' ' '))" \
            "$CTLD_LOG" "$(slurmd_log n1)" "$(slurmd_log n2)"
        sleep 0.5
    done
}

smoke_test() {
    local out
    log "smoke test: srun -N2 -n2 hostname"
    if ! out="$(timeout 60 nsenter --net="$(netns n1)" -- env SLURM_CONF="$SLURM_CONF" \
        srun -J two-node-smoke -N2 -n2 -t 1 --immediate=45 hostname 2>&1)"; then
        fail_with_logs "smoke test failed: $out" "$CTLD_LOG" "$(slurmd_log n1)" "$(slurmd_log n2)"
    fi
    [[ "$(sort <<<"$out" | tr '\n' ' ')" == "n1 n2 " ]] || fail_with_logs "smoke test: expected hosts n1 and n2, got: $out"
}

ensure_base() {
    # Packages and munge come from the one-node cluster's script (it installs and starts them).
    if ! command -v slurmctld >/dev/null 2>&1 || ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        log "slurm packages or munge missing: running slurm/local-cluster.sh start"
        bash "$HERE/local-cluster.sh" start >&2 || die "slurm/local-cluster.sh start failed"
    fi
}

cmd_start() {
    [[ "$(id -u)" == 0 ]] || die "must run as root"
    command -v nsenter >/dev/null && command -v unshare >/dev/null && command -v ip >/dev/null \
        || die "needs ip, nsenter and unshare"
    local t0=$SECONDS changed=0 started=0 n
    ensure_base
    make_dirs
    if ! network_ok; then
        # Daemons bound to old namespaces would keep talking to nobody: restart them in the new ones.
        stop_all_daemons
        make_network
    fi
    write_if_changed "$HOSTS" 644 "$(hosts_content)" && changed=1
    write_if_changed "$SLURM_CONF" 644 "$(slurm_conf_content)" && changed=1
    if [[ "$changed" == 1 ]]; then
        stop_all_daemons
    fi
    if ! running "$CTLD_PID" slurmctld n1; then
        log "starting slurmctld in n1"
        on_node n1 "/usr/sbin/slurmctld -f \"\$SLURM_CONF\"" >>"$LOG_DIR/two-node-slurmctld.stderr" 2>&1 \
            || fail_with_logs "slurmctld failed to start" "$CTLD_LOG" "$LOG_DIR/two-node-slurmctld.stderr"
        started=1
    fi
    wait_for 60 client n1 scontrol ping || fail_with_logs "slurmctld does not answer (scontrol ping)" "$CTLD_LOG"
    for n in "${NODES[@]}"; do
        if ! running "$(slurmd_pid "$n")" slurmd "$n"; then
            log "starting slurmd -N $n in $NETNS_PREFIX$n"
            on_node "$n" "/usr/sbin/slurmd -f \"\$SLURM_CONF\" -N \"\$NODE\"" >>"$LOG_DIR/two-node-slurmd-$n.stderr" 2>&1 \
                || fail_with_logs "slurmd $n failed to start" "$(slurmd_log "$n")" "$LOG_DIR/two-node-slurmd-$n.stderr"
            started=1
        fi
    done
    wait_nodes
    if [[ "$started" == 1 ]]; then
        smoke_test
        log "cluster '$CLUSTER_NAME' up: nodes n1 (${ADDR[n1]}), n2 (${ADDR[n2]}), partition two, in $((SECONDS - t0)) s"
    else
        log "cluster '$CLUSTER_NAME' already running (no-op)"
    fi
}

stop_all_daemons() {
    local n
    for n in "${NODES[@]}"; do
        stop_daemon "$(slurmd_pid "$n")" slurmd "$n"
    done
    stop_daemon "$CTLD_PID" slurmctld n1
}

cmd_stop() {
    [[ "$(id -u)" == 0 ]] || die "must run as root"
    stop_all_daemons
    delete_network
    log "stopped"
}

cmd_status() {
    local ok=0 pair name pidfile node pid out
    for pair in "slurmctld:$CTLD_PID:n1" "slurmd:$(slurmd_pid n1):n1" "slurmd:$(slurmd_pid n2):n2"; do
        IFS=: read -r name pidfile node <<<"$pair"
        if pid="$(pid_of "$pidfile" "$name" "$node")"; then
            printf '%-10s %s running (pid %s)\n' "$name" "$node" "$pid"
        else
            printf '%-10s %s NOT running\n' "$name" "$node"
            ok=1
        fi
    done
    if network_ok && out="$(timeout 15 nsenter --net="$(netns n1)" -- env SLURM_CONF="$SLURM_CONF" sinfo -N 2>&1)"; then
        echo "$out"
        for node in "${NODES[@]}"; do
            case "$(node_state "$node")" in
                idle | mixed | allocated | completing) ;;
                *) echo "node $node is not usable (state '$(node_state "$node")')"; ok=1 ;;
            esac
        done
    else
        echo "network namespaces or slurmctld not usable: ${out:-namespaces missing}"
        ok=1
    fi
    if ((ok == 0)); then
        echo "cluster usable: SLURM_CONF=$SLURM_CONF nsenter --net=$(netns n1) -- <command>"
    else
        echo "cluster NOT usable (logs in $LOG_DIR/two-node-*)"
    fi
    return "$ok"
}

usage() { echo "usage: $0 start|stop|status" >&2; exit 2; }

take_lock() {
    mkdir -p /run/lock
    exec 9>/run/lock/sslprune-two-node-cluster.lock
    flock -w 900 9 || die "another two-node-cluster.sh start/stop holds /run/lock/sslprune-two-node-cluster.lock"
}

[[ $# -eq 1 ]] || usage
case "$1" in
    start) take_lock; cmd_start ;;
    stop) take_lock; cmd_stop ;;
    status) cmd_status ;;
    *) usage ;;
esac
