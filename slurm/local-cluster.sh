#!/usr/bin/env bash
# A real single-node SLURM from Debian's packages, for trying sweeps locally and for the tests.
#   slurm/local-cluster.sh start    install (if needed), configure and start munged, slurmctld, slurmd
#   slurm/local-cluster.sh stop     stop them (by pid file, never by name)
#   slurm/local-cluster.sh status
# Needs root (Debian 12, no systemd). State lives under $MEDRET_SLURM_DIR (default /var/tmp/medret-slurm).
set -euo pipefail
STATE=${MEDRET_SLURM_DIR:-/var/tmp/medret-slurm}
CONF=/etc/slurm/slurm.conf
NODE=$(hostname -s)
CPUS=$(nproc)
MEM_MB=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))

pid_alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

install() {
  command -v slurmctld >/dev/null && command -v slurmdbd >/dev/null && command -v mariadbd >/dev/null && return
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q slurmctld slurmd slurm-client munge slurmdbd mariadb-server >/dev/null
}

# Accounting (slurmdbd + MariaDB): without it sacct fails, and submitit then waits forever on a job
# that was killed before writing its result.
start_accounting() {
  mkdir -p "$STATE/mysql" /run/mysqld && chown -R mysql:mysql "$STATE/mysql" /run/mysqld
  if [ ! -d "$STATE/mysql/mysql" ]; then
    mariadb-install-db --user=mysql --datadir="$STATE/mysql" >/dev/null 2>&1
  fi
  if ! pid_alive "$STATE/mysql/mariadb.pid"; then
    rm -f /run/mysqld/mysqld.sock
    runuser -u mysql -- /usr/sbin/mariadbd --datadir="$STATE/mysql" --socket=/run/mysqld/mysqld.sock \
      --pid-file="$STATE/mysql/mariadb.pid" --skip-networking=0 --bind-address=127.0.0.1 --port=3306 \
      >"$STATE/mysql/mariadb.log" 2>&1 &
    for _ in $(seq 120); do mariadb-admin --socket=/run/mysqld/mysqld.sock ping >/dev/null 2>&1 && break; sleep 0.5; done
  fi
  mariadb --socket=/run/mysqld/mysqld.sock -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
    CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'medret';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
  cat > /etc/slurm/slurmdbd.conf <<DBD
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=slurm
PidFile=$STATE/run/slurmdbd.pid
LogFile=$STATE/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageLoc=slurm_acct_db
StorageUser=slurm
StoragePass=medret
StoragePort=3306
DBD
  chown slurm:slurm /etc/slurm/slurmdbd.conf && chmod 600 /etc/slurm/slurmdbd.conf
  pid_alive "$STATE/run/slurmdbd.pid" || /usr/sbin/slurmdbd
  for _ in $(seq 60); do sacctmgr -i list cluster >/dev/null 2>&1 && break; sleep 0.5; done
  sacctmgr -i add cluster medret-local >/dev/null 2>&1 || true
}

configure() {
  mkdir -p "$STATE"/{ctld,d,log,run} /run/munge /etc/slurm
  chown root:root "$STATE" && chmod 755 "$STATE"  # munged refuses a pid path under a non-root dir
  chown -R slurm:slurm "$STATE"/{ctld,d,log,run}
  chown munge:munge /run/munge
  [ -s /etc/munge/munge.key ] || { dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null; }
  chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
  cat > "$CONF" <<CONF
ClusterName=medret-local
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=slurm
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
ReturnToService=2
JobRequeue=1
MpiDefault=none
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=300
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/linux
KillWait=5
Waittime=0
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CONF
}


start() {
  install
  configure
  mkdir -p "$STATE/munge" && chown munge:munge "$STATE/munge"
  if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    runuser -u munge -- /usr/sbin/munged --pid-file="$STATE/munge/munged.pid"
  fi
  start_accounting
  pid_alive "$STATE/run/slurmctld.pid" || /usr/sbin/slurmctld -f "$CONF"
  pid_alive "$STATE/run/slurmd.pid" || /usr/sbin/slurmd -f "$CONF"
  for _ in $(seq 60); do
    if sinfo -h -o %T 2>/dev/null | grep -qE "idle|mixed|alloc"; then
      echo "SLURM up: $(sinfo -h -o '%P %D %T %c')"; return 0
    fi
    scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 || true
    sleep 1
  done
  echo "SLURM did not come up; logs in $STATE/log" >&2
  tail -5 "$STATE/log/slurmctld.log" "$STATE/log/slurmd.log" >&2 || true
  return 1
}

stop() {
  for pidfile in run/slurmd.pid run/slurmctld.pid run/slurmdbd.pid mysql/mariadb.pid munge/munged.pid; do
    if pid_alive "$STATE/$pidfile"; then kill "$(cat "$STATE/$pidfile")"; fi
  done
  echo "stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) sinfo && squeue ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
