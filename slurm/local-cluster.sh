#!/usr/bin/env bash
# local-cluster.sh -- a single-node SLURM cluster on localhost, with job accounting.
#
#   bash slurm/local-cluster.sh start    install if needed, write configs, start daemons (idempotent)
#   bash slurm/local-cluster.sh stop     stop slurmd, slurmctld, slurmdbd, mariadbd, munged (exit 0 if not running)
#   bash slurm/local-cluster.sh status   show daemons and sinfo; exit 0 only if the cluster is usable
#
# Runs as root on Debian 12 without systemd: every daemon is started by hand.
# Environment:
#   SSLPRUNE_SLURM_CPUS     CPUs the node declares (default 8; more than the real cores, for many tiny jobs)
#   SSLPRUNE_SLURM_TIMEOUT  seconds `start` waits for the cluster to become usable (default 120)
#   SSLPRUNE_APT_TIMEOUT    seconds to wait for another apt-get/dpkg to finish (default 900)
set -euo pipefail

CPUS="${SSLPRUNE_SLURM_CPUS:-8}"
START_TIMEOUT="${SSLPRUNE_SLURM_TIMEOUT:-120}"
APT_TIMEOUT="${SSLPRUNE_APT_TIMEOUT:-900}"
CLUSTER_NAME="sslprune"
PACKAGES=(slurm-wlm munge slurmdbd mariadb-server)

CONF_DIR=/etc/slurm
SLURM_CONF="$CONF_DIR/slurm.conf"
SLURMDBD_CONF="$CONF_DIR/slurmdbd.conf"
LOG_DIR=/var/log/slurm
RUN_DIR=/run/slurm
CTLD_SPOOL=/var/spool/slurmctld
SLURMD_SPOOL=/var/spool/slurmd
CTLD_PID="$RUN_DIR/slurmctld.pid"
SLURMD_PID="$RUN_DIR/slurmd.pid"
DBD_PID="$RUN_DIR/slurmdbd.pid"
MUNGE_PID=/run/munge/munged.pid
MYSQL_PID=/run/mysqld/mysqld.pid
MYSQL_LOG="$LOG_DIR/mariadb.log"
MUNGE_LOG=/var/log/munge/munged.log
DB_NAME=slurm_acct_db
DB_USER=slurm
# Local-only test cluster: mariadb listens on 127.0.0.1 only; slurmdbd.conf holding this is mode 600.
DB_PASS=sslprune-local-slurmdbd

log() { echo "local-cluster: $*" >&2; }
die() { echo "local-cluster: ERROR: $*" >&2; exit 1; }

HOST="$(hostname -s)"

# ---------------------------------------------------------------- helpers

# pid_alive PIDFILE NAME: true if PIDFILE names a live process called NAME.
pid_alive() {
    local pidfile="$1" name="$2" pid
    [[ -r "$pidfile" ]] || return 1
    pid="$(tr -dc '0-9' <"$pidfile" 2>/dev/null || true)"
    [[ -n "$pid" ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    [[ "$(cat "/proc/$pid/comm" 2>/dev/null || true)" == "$name" ]]
}

# daemon_pids PIDFILE NAME: pids of the daemon (from its pid file, else by exact process name).
daemon_pids() {
    local pidfile="$1" name="$2"
    if pid_alive "$pidfile" "$name"; then
        tr -dc '0-9' <"$pidfile"; echo
    else
        # Only processes in this network namespace: slurm/two-node-cluster.sh runs daemons of the same
        # names in its own namespaces, and they are not this cluster's to report or stop.
        local pid here
        here="$(stat -L -c %i /proc/self/ns/net)"
        for pid in $(pgrep -x "$name" || true); do
            [[ "$(stat -L -c %i "/proc/$pid/ns/net" 2>/dev/null)" == "$here" ]] && echo "$pid"
        done
        return 0
    fi
}

running() { [[ -n "$(daemon_pids "$1" "$2")" ]]; }

# stop_daemon PIDFILE NAME: SIGTERM, wait up to 30 s, then SIGKILL.
stop_daemon() {
    local pidfile="$1" name="$2" pids i
    pids="$(daemon_pids "$pidfile" "$name")"
    if [[ -z "$pids" ]]; then
        log "$name not running"
        rm -f "$pidfile"
        return 0
    fi
    log "stopping $name (pid ${pids//$'\n'/ })"
    # shellcheck disable=SC2086
    kill -TERM $pids 2>/dev/null || true
    for ((i = 0; i < 300; i++)); do
        # shellcheck disable=SC2086
        kill -0 $pids 2>/dev/null || break
        sleep 0.1
    done
    # shellcheck disable=SC2086
    if kill -0 $pids 2>/dev/null; then
        log "$name did not stop in 30 s: SIGKILL"
        # shellcheck disable=SC2086
        kill -KILL $pids 2>/dev/null || true
        sleep 0.5
    fi
    rm -f "$pidfile"
}

# wait_for SECONDS DESCRIPTION COMMAND...: poll COMMAND every 0.2 s until it succeeds (DESCRIPTION is for the reader).
wait_for() {
    local secs="$1"; shift 2
    local deadline=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || return 1
        sleep 0.2
    done
}

fail_with_logs() {
    local msg="$1"; shift
    echo "local-cluster: ERROR: $msg" >&2
    local f
    for f in "$@"; do
        if [[ -r "$f" ]]; then
            echo "local-cluster: ---- last lines of $f ----" >&2
            tail -n 15 "$f" >&2 || true
        fi
    done
    echo "local-cluster: logs: $LOG_DIR/{slurmctld,slurmd,slurmdbd,mariadb}.log $MUNGE_LOG; configs: $SLURM_CONF $SLURMDBD_CONF" >&2
    exit 1
}

# ---------------------------------------------------------------- packages

apt_busy() { pgrep -x 'apt-get|apt|dpkg|aptitude|unattended-upgr' >/dev/null 2>&1; }

wait_for_apt() {
    if apt_busy; then
        log "another apt-get/dpkg is running; waiting for it to finish (up to ${APT_TIMEOUT} s)"
        local deadline=$((SECONDS + APT_TIMEOUT))
        while apt_busy; do
            ((SECONDS < deadline)) || die "apt-get/dpkg still running after ${APT_TIMEOUT} s: $(pgrep -a -x 'apt-get|apt|dpkg' | head -3 | tr '\n' ';')"
            sleep 1
        done
        log "apt/dpkg finished"
    fi
}

packages_missing() {
    local p st missing=()
    for p in "${PACKAGES[@]}"; do
        st="$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)"
        [[ "$st" == "install ok installed" ]] || missing+=("$p")
    done
    echo "${missing[*]}"
}

ensure_packages() {
    wait_for_apt
    local missing
    missing="$(packages_missing)"
    [[ -z "$missing" ]] && return 0
    log "installing missing packages: $missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout="$APT_TIMEOUT" update >&2 \
        || die "apt-get update failed"
    apt-get -o DPkg::Lock::Timeout="$APT_TIMEOUT" install -y "${PACKAGES[@]}" >&2 \
        || die "apt-get install ${PACKAGES[*]} failed"
    missing="$(packages_missing)"
    [[ -z "$missing" ]] || die "packages still not installed: $missing"
    log "packages installed"
}

# ---------------------------------------------------------------- configs

# write_if_changed PATH MODE CONTENT: write only when missing or different; return 0 if written.
write_if_changed() {
    local path="$1" mode="$2" content="$3"
    if [[ -f "$path" ]] && [[ "$(cat "$path")" == "$content" ]]; then
        chmod "$mode" "$path"
        return 1
    fi
    local tmp
    tmp="$(mktemp "$path.XXXXXX")"
    printf '%s\n' "$content" >"$tmp"
    chmod "$mode" "$tmp"
    mv -f "$tmp" "$path"
    log "wrote $path"
    return 0
}

real_memory_mb() {
    # 90 % of what slurmd detects, rounded down to 512 MB, so small fluctuations do not change the config.
    local mem
    mem="$(slurmd -C 2>/dev/null | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' | head -1)"
    [[ -n "$mem" ]] || mem="$(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo)"
    mem=$((mem * 9 / 10 / 512 * 512))
    ((mem >= 512)) || mem=512
    echo "$mem"
}

slurm_conf_content() {
    cat <<EOF
# Generated by slurm/local-cluster.sh -- single-node local test cluster. Edits are overwritten by 'start'.
ClusterName=$CLUSTER_NAME
SlurmctldHost=$HOST(127.0.0.1)
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
SlurmdPidFile=$SLURMD_PID
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$CTLD_SPOOL
SlurmdSpoolDir=$SLURMD_SPOOL
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
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
MaxArraySize=10001
MaxJobCount=20000
InactiveLimit=0
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
JobCompType=jobcomp/none
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$(real_memory_mb) State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

slurmdbd_conf_content() {
    cat <<EOF
# Generated by slurm/local-cluster.sh -- local test cluster accounting. Edits are overwritten by 'start'.
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=root
LogFile=$LOG_DIR/slurmdbd.log
PidFile=$DBD_PID
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=localhost
StoragePort=3306
StorageUser=$DB_USER
StoragePass=$DB_PASS
StorageLoc=$DB_NAME
EOF
}

make_dirs() {
    mkdir -p "$CONF_DIR" "$LOG_DIR" "$RUN_DIR" "$CTLD_SPOOL" "$SLURMD_SPOOL"
    chmod 755 "$LOG_DIR" "$RUN_DIR"
    chmod 700 "$CTLD_SPOOL" "$SLURMD_SPOOL"
    install -d -o munge -g munge -m 755 /run/munge
    install -d -o munge -g munge -m 700 /var/log/munge
    install -d -o munge -g munge -m 711 /var/lib/munge
    install -d -o mysql -g mysql -m 755 /run/mysqld
    touch "$MYSQL_LOG"
    chown mysql:mysql "$MYSQL_LOG"
}

# ---------------------------------------------------------------- daemons

munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {
    if [[ ! -s /etc/munge/munge.key ]]; then
        log "creating /etc/munge/munge.key"
        install -d -o munge -g munge -m 700 /etc/munge
        mungekey --create --force --keyfile=/etc/munge/munge.key >&2 \
            || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
        chown munge:munge /etc/munge/munge.key
        chmod 600 /etc/munge/munge.key
    fi
    if running "$MUNGE_PID" munged && munge_ok; then
        return 0
    fi
    running "$MUNGE_PID" munged && stop_daemon "$MUNGE_PID" munged
    log "starting munged"
    # --force: take over a stale socket left by an unclean stop.
    runuser -u munge -- /usr/sbin/munged --force </dev/null >>"$LOG_DIR/munged.stderr" 2>&1 9>&- \
        || fail_with_logs "munged failed to start" "$MUNGE_LOG" "$LOG_DIR/munged.stderr"
    wait_for 20 munge munge_ok || fail_with_logs "munge -n | unmunge fails" "$MUNGE_LOG"
    STARTED=1
}

mysql_ok() { mariadb-admin --protocol=socket -uroot ping >/dev/null 2>&1; }

start_mariadb() {
    if [[ ! -d /var/lib/mysql/mysql ]]; then
        log "initialising mariadb data directory"
        mariadb-install-db --user=mysql --datadir=/var/lib/mysql >>"$MYSQL_LOG" 2>&1 \
            || fail_with_logs "mariadb-install-db failed" "$MYSQL_LOG"
    fi
    if ! running "$MYSQL_PID" mariadbd || ! mysql_ok; then
        if ! running "$MYSQL_PID" mariadbd; then
            log "starting mariadbd"
            setsid /usr/sbin/mariadbd --user=mysql --bind-address=127.0.0.1 --pid-file="$MYSQL_PID" \
                --log-error="$MYSQL_LOG" --innodb-lock-wait-timeout=900 --innodb-buffer-pool-size=256M \
                </dev/null >>"$MYSQL_LOG" 2>&1 9>&- &
            disown || true
            STARTED=1
        fi
        wait_for 60 mariadb mysql_ok || fail_with_logs "mariadbd does not answer" "$MYSQL_LOG"
    fi
    # Database and user for slurmdbd (idempotent, fast).
    mariadb --protocol=socket -uroot <<SQL || fail_with_logs "could not create the slurmdbd database/user" "$MYSQL_LOG"
CREATE DATABASE IF NOT EXISTS $DB_NAME;
CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
ALTER USER '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON $DB_NAME.* TO '$DB_USER'@'localhost';
SQL
}

dbd_ok() { sacctmgr -n -P list cluster format=cluster >/dev/null 2>&1; }

start_slurmdbd() {
    local changed="$1"
    if [[ "$changed" == 1 ]] && running "$DBD_PID" slurmdbd; then
        log "slurmdbd.conf changed: restarting slurmdbd"
        stop_daemon "$DBD_PID" slurmdbd
    fi
    if ! running "$DBD_PID" slurmdbd; then
        log "starting slurmdbd"
        /usr/sbin/slurmdbd </dev/null >>"$LOG_DIR/slurmdbd.stderr" 2>&1 9>&- \
            || fail_with_logs "slurmdbd failed to start" "$LOG_DIR/slurmdbd.log" "$LOG_DIR/slurmdbd.stderr"
        STARTED=1
    fi
    wait_for 60 slurmdbd dbd_ok \
        || fail_with_logs "slurmdbd does not answer (sacctmgr list cluster fails)" "$LOG_DIR/slurmdbd.log" "$MYSQL_LOG"
    if ! sacctmgr -n -P list cluster format=cluster 2>/dev/null | grep -qx "$CLUSTER_NAME"; then
        log "registering cluster $CLUSTER_NAME in accounting"
        sacctmgr -i add cluster "$CLUSTER_NAME" >&2 || fail_with_logs "sacctmgr add cluster failed" "$LOG_DIR/slurmdbd.log"
    fi
}

start_slurm() {
    local changed="$1"
    if [[ "$changed" == 1 ]]; then
        if running "$SLURMD_PID" slurmd || running "$CTLD_PID" slurmctld; then
            log "slurm.conf changed: restarting slurmctld and slurmd"
            stop_daemon "$SLURMD_PID" slurmd
            stop_daemon "$CTLD_PID" slurmctld
        fi
    fi
    if ! running "$CTLD_PID" slurmctld; then
        log "starting slurmctld"
        /usr/sbin/slurmctld </dev/null >>"$LOG_DIR/slurmctld.stderr" 2>&1 9>&- \
            || fail_with_logs "slurmctld failed to start" "$LOG_DIR/slurmctld.log" "$LOG_DIR/slurmctld.stderr"
        STARTED=1
    fi
    wait_for 60 slurmctld scontrol ping \
        || fail_with_logs "slurmctld does not answer (scontrol ping)" "$LOG_DIR/slurmctld.log"
    if ! running "$SLURMD_PID" slurmd; then
        log "starting slurmd"
        /usr/sbin/slurmd </dev/null >>"$LOG_DIR/slurmd.stderr" 2>&1 9>&- \
            || fail_with_logs "slurmd failed to start" "$LOG_DIR/slurmd.log" "$LOG_DIR/slurmd.stderr"
        STARTED=1
    fi
}

node_state() { sinfo -h -N -n "$HOST" -o '%T' 2>/dev/null | head -1; }

node_usable() {
    case "$(node_state)" in
        idle | mixed | allocated | completing) return 0 ;;
        *) return 1 ;;
    esac
}

# Wait for the node to be usable, resuming it if it is drained or down.
wait_node() {
    local deadline=$((SECONDS + START_TIMEOUT)) st resumed=0
    while :; do
        st="$(node_state)"
        case "$st" in
            idle | mixed | allocated | completing) return 0 ;;
            *drain* | down | fail | failing | inval)
                if ((resumed < 3)); then
                    log "node $HOST is '$st' (reason: $(sinfo -h -N -n "$HOST" -o '%E' 2>/dev/null)); resuming it"
                    scontrol update nodename="$HOST" state=resume >&2 || true
                    resumed=$((resumed + 1))
                fi
                ;;
        esac
        if ((SECONDS >= deadline)); then
            fail_with_logs "node $HOST not usable after ${START_TIMEOUT} s (state '${st:-none}')" \
                "$LOG_DIR/slurmctld.log" "$LOG_DIR/slurmd.log"
        fi
        sleep 0.5
    done
}

smoke_test() {
    local out
    if [[ "$(node_state)" == allocated ]]; then
        log "node $HOST is fully allocated by running jobs: skipping the srun smoke test"
        return 0
    fi
    log "smoke test: srun -N1 -n1 true"
    if ! out="$(timeout 60 srun -J local-cluster-smoke -N1 -n1 -t 1 --immediate=45 true 2>&1)"; then
        fail_with_logs "smoke test 'srun -N1 -n1 true' failed: $out" "$LOG_DIR/slurmctld.log" "$LOG_DIR/slurmd.log"
    fi
}

# ---------------------------------------------------------------- commands

cmd_start() {
    [[ "$(id -u)" == 0 ]] || die "must run as root"
    [[ "$CPUS" =~ ^[1-9][0-9]*$ ]] || die "SSLPRUNE_SLURM_CPUS must be a positive integer, got '$CPUS'"
    local t0=$SECONDS conf_changed=0 dbd_changed=0
    STARTED=0
    ensure_packages
    make_dirs
    write_if_changed "$SLURMDBD_CONF" 600 "$(slurmdbd_conf_content)" && dbd_changed=1
    write_if_changed "$SLURM_CONF" 644 "$(slurm_conf_content)" && conf_changed=1
    start_munge
    start_mariadb
    start_slurmdbd "$dbd_changed"
    start_slurm "$conf_changed"
    wait_node
    if [[ "$STARTED" == 1 || "$conf_changed" == 1 || "$dbd_changed" == 1 ]]; then
        smoke_test
        log "cluster '$CLUSTER_NAME' up on $HOST ($CPUS CPUs, partition debug) in $((SECONDS - t0)) s"
    else
        log "cluster '$CLUSTER_NAME' already running on $HOST (no-op)"
    fi
}

cmd_stop() {
    [[ "$(id -u)" == 0 ]] || die "must run as root"
    stop_daemon "$SLURMD_PID" slurmd
    stop_daemon "$CTLD_PID" slurmctld
    stop_daemon "$DBD_PID" slurmdbd
    stop_daemon "$MYSQL_PID" mariadbd
    stop_daemon "$MUNGE_PID" munged
    log "stopped"
}

cmd_status() {
    local ok=0 name pidfile pids
    for pair in "munged:$MUNGE_PID" "mariadbd:$MYSQL_PID" "slurmdbd:$DBD_PID" "slurmctld:$CTLD_PID" "slurmd:$SLURMD_PID"; do
        name="${pair%%:*}"; pidfile="${pair#*:}"
        pids="$(daemon_pids "$pidfile" "$name")"
        if [[ -n "$pids" ]]; then
            printf '%-10s running (pid %s)\n' "$name" "${pids//$'\n'/ }"
        else
            printf '%-10s NOT running\n' "$name"
            ok=1
        fi
    done
    if command -v sinfo >/dev/null 2>&1 && sinfo_out="$(timeout 15 sinfo 2>&1)"; then
        echo "$sinfo_out"
        if ! node_usable; then
            echo "node $HOST is not usable (state '$(node_state)')"
            ok=1
        fi
    else
        echo "sinfo: ${sinfo_out:-not installed}"
        ok=1
    fi
    if ((ok == 0)); then
        echo "cluster usable"
    else
        echo "cluster NOT usable (logs in $LOG_DIR, $MUNGE_LOG)"
    fi
    return "$ok"
}

usage() { echo "usage: $0 start|stop|status" >&2; exit 2; }

# Serialise concurrent start/stop calls (for example from parallel test workers).
take_lock() {
    mkdir -p /run/lock
    exec 9>/run/lock/sslprune-local-cluster.lock
    flock -w 900 9 || die "another local-cluster.sh start/stop holds /run/lock/sslprune-local-cluster.lock"
}

[[ $# -eq 1 ]] || usage
case "$1" in
    start) take_lock; cmd_start ;;
    stop) take_lock; cmd_stop ;;
    status) cmd_status ;;
    *) usage ;;
esac
