#!/usr/bin/env bash
# slurm/local/start.sh: start a throw-away single-node SLURM cluster on 127.0.0.1.
#
#   munged (private socket) + mariadbd + slurmdbd (accounting, so that sacct works)
#   + slurmctld + slurmd
#
# For the project's SLURM tests and for trying sweeps locally. Needs root and Debian 12 (no
# systemd needed); installs the Debian packages when they are missing. Everything the cluster
# writes lives under one state directory; daemons that already run (by their pid files there)
# are left alone, so starting twice is harmless. Waits, with a deadline, until the node is idle.
#
#   slurm/local/start.sh && source /tmp/adaptconv-slurm/env.sh     # sets SLURM_CONF
#   slurm/local/stop.sh [--purge]
#
# Environment:
#   ADAPTCONV_SLURM_DIR=/tmp/adaptconv-slurm    state dir: config, pid files, logs, databases
#   ADAPTCONV_SLURM_WAIT_S=60                   deadline for each daemon and for the idle node
#   ADAPTCONV_SLURM_INSTALL=1                   0: fail instead of running apt-get
#   ADAPTCONV_SLURM_MAX_ARRAY_SIZE=1001         slurm.conf MaxArraySize (array indices 0..N-1)
#   ADAPTCONV_SLURM_CRED_EXPIRE=10              seconds a requeued job waits before it restarts
#   ADAPTCONV_SLURM_CTLD_PORT=6817  ADAPTCONV_SLURM_SLURMD_PORT=6818
#   ADAPTCONV_SLURM_DBD_PORT=6819   ADAPTCONV_SLURM_DB_PORT=3307      (all on 127.0.0.1)
#   ADAPTCONV_SLURM_PARTITION=debug ADAPTCONV_SLURM_CLUSTER=adaptconv
set -euo pipefail
shopt -u patsub_replacement 2>/dev/null || true   # '&' in ${var//pat/rep} stays literal

export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:${PATH:-}"
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DIR=$(realpath -m "${ADAPTCONV_SLURM_DIR:-/tmp/adaptconv-slurm}")
WAIT_S=${ADAPTCONV_SLURM_WAIT_S:-60}
INSTALL=${ADAPTCONV_SLURM_INSTALL:-1}
MAX_ARRAY_SIZE=${ADAPTCONV_SLURM_MAX_ARRAY_SIZE:-1001}
CRED_EXPIRE=${ADAPTCONV_SLURM_CRED_EXPIRE:-10}
CTLD_PORT=${ADAPTCONV_SLURM_CTLD_PORT:-6817}
SLURMD_PORT=${ADAPTCONV_SLURM_SLURMD_PORT:-6818}
DBD_PORT=${ADAPTCONV_SLURM_DBD_PORT:-6819}
DB_PORT=${ADAPTCONV_SLURM_DB_PORT:-3307}
PARTITION=${ADAPTCONV_SLURM_PARTITION:-debug}
CLUSTER=${ADAPTCONV_SLURM_CLUSTER:-adaptconv}
MARKER=.adaptconv-slurm   # stop.sh --purge only deletes a directory holding this file

T0=$(date +%s%N)
log() {
  local ms=$(( ($(date +%s%N) - T0) / 1000000 ))
  printf '[slurm start %3d.%03ds] %s\n' $((ms / 1000)) $((ms % 1000)) "$*"
}
die() { echo "slurm start: ERROR: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (it starts munged, mariadbd and the SLURM daemons)"
# unix socket paths are limited to 107 bytes
[ ${#DIR} -le 60 ] || die "ADAPTCONV_SLURM_DIR is too long for the socket paths under it: $DIR"

# ------------------------------------------------------------------------------- packages
pkgs=()
[ -x /usr/sbin/munged ] || pkgs+=(munge)
[ -x /usr/sbin/mariadbd ] || pkgs+=(mariadb-server)
[ -x /usr/sbin/slurmdbd ] || pkgs+=(slurmdbd)            # brings slurm-wlm-mysql-plugin
[ -x /usr/sbin/slurmctld ] || pkgs+=(slurmctld)
[ -x /usr/sbin/slurmd ] || pkgs+=(slurmd)
[ -x /usr/bin/sbatch ] || pkgs+=(slurm-client)
if [ ${#pkgs[@]} -gt 0 ]; then
  [ "$INSTALL" = 1 ] || die "missing Debian packages: ${pkgs[*]} (ADAPTCONV_SLURM_INSTALL=0)"
  log "apt-get install ${pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # The packages' maintainer scripts must not start system-wide munge/mariadb/slurm services:
  # without a policy-rc.d, invoke-rc.d would run their init scripts. Ours is removed again.
  policy=/usr/sbin/policy-rc.d
  own_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# temporary, from adaptconv slurm/local/start.sh\nexit 101\n' >"$policy"
    chmod 0755 "$policy"
    own_policy=1
    trap 'if [ "$own_policy" = 1 ]; then rm -f "$policy"; fi' EXIT
  fi
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
  if [ "$own_policy" = 1 ]; then rm -f "$policy"; own_policy=0; fi
  log "packages installed"
fi

# ------------------------------------------------------------------------------- helpers
# alive PID COMM: PID runs, is no zombie (PID 1 here may reap late) and /proc/PID/comm is COMM
alive() {
  [ "$(cat "/proc/$1/comm" 2>/dev/null)" = "$2" ] || return 1
  [ "$(sed 's/.*) //; s/ .*//' "/proc/$1/stat" 2>/dev/null)" != Z ]
}
# pid_alive FILE COMM: FILE holds the pid of a live process whose comm is COMM
pid_alive() {
  local p
  [ -s "$1" ] || return 1
  p=$(cat "$1" 2>/dev/null) || return 1
  [[ "$p" =~ ^[0-9]+$ ]] && alive "$p" "$2"
}
show_logs() {  # tail of every log, for failures
  local f
  for f in "$DIR"/log/*.log "$DIR"/log/*.out "$DIR"/log/*.err; do
    [ -s "$f" ] && { echo "---- $f" >&2; tail -n 20 "$f" >&2; }
  done
  return 0
}
fail() { show_logs; die "$*"; }
# wait_for SECONDS WHAT COMMAND...: run COMMAND every 0.1 s until it succeeds
wait_for() {
  local secs=$1 what=$2 end
  shift 2
  end=$(( $(date +%s) + secs ))
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$end" ] || fail "timed out after ${secs}s waiting for $what"
    sleep 0.1
  done
}
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# port_free PORT NAME: die if someone else already listens on PORT
port_free() { ! port_open "$1" || die "port $1 (for $2) is taken by another process; pick another one (see the top of $0)"; }
running() { log "$1 already running (pid $(cat "$2"))"; }

# ------------------------------------------------------------------------------- layout
# The marker lets stop.sh --purge delete the dir: never adopt a directory that holds other things.
if [ -d "$DIR" ] && [ ! -e "$DIR/$MARKER" ] && [ -n "$(ls -A "$DIR")" ]; then
  die "$DIR exists, is not empty and was not made by this script: set ADAPTCONV_SLURM_DIR"
fi
mkdir -p "$DIR"
touch "$DIR/$MARKER"
mkdir -p "$DIR"/{etc,state,spool,log,run}
chmod 0755 "$DIR" "$DIR/run" "$DIR/log"
install -d -m 0700 -o munge -g munge "$DIR/munge"
install -d -m 0755 -o munge -g munge "$DIR/run/munge"
install -d -m 0750 -o mysql -g mysql "$DIR/mysql"
install -d -m 0755 -o mysql -g mysql "$DIR/run/mysqld"
install -d -m 0755 -o munge -g munge "$DIR/log/munge"
install -d -m 0755 -o mysql -g mysql "$DIR/log/mysql"
CONF=$DIR/etc/slurm.conf
DBD_CONF=$DIR/etc/slurmdbd.conf
MUNGE_SOCKET=$DIR/run/munge/munge.socket.2
MUNGE_PID=$DIR/run/munge/munged.pid
DB_SOCKET=$DIR/run/mysqld/mysqld.sock
DB_PID=$DIR/run/mysqld/mariadbd.pid
export SLURM_CONF=$CONF   # slurmdbd reads slurmdbd.conf from the directory of SLURM_CONF

# ------------------------------------------------------------------------------- slurm.conf
NODENAME=$(hostname -s)
hw=$(slurmd -C | sed -n 's/^NodeName=[^ ]* //p' | head -n 1)
[ -n "$hw" ] || die "'slurmd -C' printed no NodeName line"
conf=$(<"$HERE/slurm.conf.template")
for kv in "DIR=$DIR" "CLUSTER=$CLUSTER" "CTLD_HOST=$NODENAME" "NODENAME=$NODENAME" \
          "NODE_HW=$hw" "PARTITION=$PARTITION" "CTLD_PORT=$CTLD_PORT" "SLURMD_PORT=$SLURMD_PORT" \
          "DBD_PORT=$DBD_PORT" "MUNGE_SOCKET=$MUNGE_SOCKET" "CRED_EXPIRE=$CRED_EXPIRE" \
          "MAX_ARRAY_SIZE=$MAX_ARRAY_SIZE"; do
  conf=${conf//@${kv%%=*}@/${kv#*=}}
done
[[ "$conf" != *@[A-Z_]*@* ]] || die "unfilled placeholder in slurm.conf: $(grep -o '@[A-Z_]*@' <<<"$conf" | head -n 1)"
if [ -f "$CONF" ] && [ "$conf" != "$(<"$CONF")" ] && pid_alive "$DIR/run/slurmctld.pid" slurmctld; then
  log "WARNING: slurm.conf changed while the cluster runs; run stop.sh, then start.sh, to apply it"
fi
printf '%s\n' "$conf" >"$CONF"
chmod 0644 "$CONF"
log "wrote $CONF (node $NODENAME: $hw)"

# ------------------------------------------------------------------------------- munged
if pid_alive "$MUNGE_PID" munged; then
  running munged "$MUNGE_PID"
else
  [ -s "$DIR/munge/munge.key" ] || runuser -u munge -- mungekey --create --keyfile="$DIR/munge/munge.key"
  runuser -u munge -- munged --key-file="$DIR/munge/munge.key" --socket="$MUNGE_SOCKET" \
    --pid-file="$MUNGE_PID" --log-file="$DIR/log/munge/munged.log" \
    --seed-file="$DIR/munge/munged.seed" </dev/null >>"$DIR/log/munged.out" 2>&1 \
    || fail "munged did not start"
  wait_for "$WAIT_S" "munged's pid file" pid_alive "$MUNGE_PID" munged
  log "munged started"
fi
munge_ok() { munge -n -S "$MUNGE_SOCKET" | unmunge -S "$MUNGE_SOCKET"; }
wait_for "$WAIT_S" "munged to answer" munge_ok

# ------------------------------------------------------------------------------- mariadbd
DB_OPTS=(--no-defaults --user=mysql --datadir="$DIR/mysql" --skip-name-resolve
         --innodb-log-file-size=16M --innodb-buffer-pool-size=64M)
if [ ! -d "$DIR/mysql/mysql" ]; then
  mariadb-install-db "${DB_OPTS[@]}" --auth-root-authentication-method=socket --skip-test-db \
    >"$DIR/log/mariadb-install-db.out" 2>&1 || fail "mariadb-install-db failed"
  log "MariaDB data directory created"
fi
if pid_alive "$DB_PID" mariadbd; then
  running mariadbd "$DB_PID"
else
  port_free "$DB_PORT" mariadbd
  # mariadbd does not daemonize itself: detach it from this shell and its terminal
  setsid mariadbd "${DB_OPTS[@]}" --socket="$DB_SOCKET" --pid-file="$DB_PID" \
    --bind-address=127.0.0.1 --port="$DB_PORT" --log-error="$DIR/log/mysql/mariadbd.err" \
    </dev/null >>"$DIR/log/mariadbd.out" 2>&1 &
  disown
  wait_for "$WAIT_S" "mariadbd's pid file" pid_alive "$DB_PID" mariadbd
  log "mariadbd started"
fi
wait_for "$WAIT_S" "mariadbd to answer" mariadb-admin --no-defaults --socket="$DB_SOCKET" -uroot ping

# ------------------------------------------------------------------------------- slurmdbd
# The database password is made once and kept in slurmdbd.conf (mode 0600).
db_pass=$(sed -n 's/^StoragePass=//p' "$DBD_CONF" 2>/dev/null || true)
[ -n "$db_pass" ] || db_pass=$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')
mariadb --no-defaults --socket="$DB_SOCKET" -uroot -e "
  CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$db_pass';
  ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$db_pass';
  GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';" || fail "could not create the slurm database user"
(
  umask 077
  cat >"$DBD_CONF.new" <<EOF
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
DbdAddr=127.0.0.1
DbdHost=localhost
DbdPort=$DBD_PORT
SlurmUser=root
DebugLevel=info
LogFile=$DIR/log/slurmdbd.log
PidFile=$DIR/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$db_pass
StorageLoc=slurm_acct_db
EOF
)
mv -f "$DBD_CONF.new" "$DBD_CONF"
if pid_alive "$DIR/run/slurmdbd.pid" slurmdbd; then
  running slurmdbd "$DIR/run/slurmdbd.pid"
else
  port_free "$DBD_PORT" slurmdbd
  slurmdbd </dev/null >>"$DIR/log/slurmdbd.out" 2>&1 || fail "slurmdbd did not start"
  wait_for "$WAIT_S" "slurmdbd's pid file" pid_alive "$DIR/run/slurmdbd.pid" slurmdbd
  log "slurmdbd started"
fi
wait_for "$WAIT_S" "slurmdbd to listen on port $DBD_PORT" port_open "$DBD_PORT"

# ------------------------------------------------------------------------------- slurmctld, slurmd
if pid_alive "$DIR/run/slurmctld.pid" slurmctld; then
  running slurmctld "$DIR/run/slurmctld.pid"
else
  port_free "$CTLD_PORT" slurmctld
  slurmctld -f "$CONF" </dev/null >>"$DIR/log/slurmctld.out" 2>&1 || fail "slurmctld did not start"
  wait_for "$WAIT_S" "slurmctld's pid file" pid_alive "$DIR/run/slurmctld.pid" slurmctld
  log "slurmctld started"
fi
if pid_alive "$DIR/run/slurmd.pid" slurmd; then
  running slurmd "$DIR/run/slurmd.pid"
else
  port_free "$SLURMD_PORT" slurmd
  slurmd -f "$CONF" -N "$NODENAME" </dev/null >>"$DIR/log/slurmd.out" 2>&1 || fail "slurmd did not start"
  wait_for "$WAIT_S" "slurmd's pid file" pid_alive "$DIR/run/slurmd.pid" slurmd
  log "slurmd started"
fi

# ------------------------------------------------------------------------------- idle node
end=$(( $(date +%s) + WAIT_S ))
state=""
while :; do
  pid_alive "$DIR/run/slurmctld.pid" slurmctld || fail "slurmctld died"
  pid_alive "$DIR/run/slurmd.pid" slurmd || fail "slurmd died"
  # a slurmctld that does not answer makes sinfo hang for ~10 s: bound it
  state=$(timeout 5 sinfo -h -n "$NODENAME" -o '%T' 2>/dev/null || true)
  case "$state" in
    idle|mixed|allocated|completing) break ;;
    drain*|down*) scontrol update NodeName="$NODENAME" State=RESUME >/dev/null 2>&1 || true ;;
  esac
  [ "$(date +%s)" -lt "$end" ] || fail "node $NODENAME not ready after ${WAIT_S}s (state: '${state:-no answer}')"
  sleep 0.2
done
printf 'export ADAPTCONV_SLURM_DIR=%q\nexport SLURM_CONF=%q\n' "$DIR" "$CONF" >"$DIR/env.sh"
log "node $NODENAME is $state"
cat <<EOF
SLURM is up (partition $PARTITION).   SLURM_CONF=$CONF
  clients need it:  source $DIR/env.sh
  logs: $DIR/log/      stop: $HERE/stop.sh [--purge]
EOF
