#!/usr/bin/env bash
# slurm/local/stop.sh: stop the local cluster that slurm/local/start.sh started.
#
#   slurm/local/stop.sh           cancel its jobs, stop its daemons; keep the state dir (logs, accounting)
#   slurm/local/stop.sh --purge   the same, then delete the state dir (job ids restart at 1)
#
# Only the processes named by the pid files under $ADAPTCONV_SLURM_DIR (default
# /tmp/adaptconv-slurm) are signalled, and only if /proc/PID/comm is the expected daemon:
# nothing is killed by name. Stopping a cluster that does not run is not an error.
set -uo pipefail

export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:${PATH:-}"
DIR=$(realpath -m "${ADAPTCONV_SLURM_DIR:-/tmp/adaptconv-slurm}")
MARKER=.adaptconv-slurm
PURGE=0
for arg in "$@"; do
  case "$arg" in
    --purge) PURGE=1 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "usage: $0 [--purge]" >&2; exit 2 ;;
  esac
done
export SLURM_CONF=$DIR/etc/slurm.conf

T0=$(date +%s%N)
log() {
  local ms=$(( ($(date +%s%N) - T0) / 1000000 ))
  printf '[slurm stop %3d.%03ds] %s\n' $((ms / 1000)) $((ms % 1000)) "$*"
}

# alive PID COMM: PID runs, is no zombie (PID 1 here may reap late) and /proc/PID/comm is COMM
alive() {
  [ "$(cat "/proc/$1/comm" 2>/dev/null)" = "$2" ] || return 1
  [ "$(sed 's/.*) //; s/ .*//' "/proc/$1/stat" 2>/dev/null)" != Z ]
}
# pid_of FILE COMM: print the pid in FILE if that process is alive and its comm is COMM
pid_of() {
  local p
  [ -s "$1" ] || return 1
  p=$(cat "$1" 2>/dev/null) || return 1
  [[ "$p" =~ ^[0-9]+$ ]] && alive "$p" "$2" && echo "$p"
}

# stop_daemon COMM PIDFILE: SIGTERM, wait up to 15 s, then SIGKILL
stop_daemon() {
  local name=$1 file=$2 p i
  if ! p=$(pid_of "$file" "$name"); then
    log "$name: not running"
    rm -f "$file"
    return 0
  fi
  kill -TERM "$p" 2>/dev/null
  for ((i = 0; i < 150; i++)); do
    alive "$p" "$name" || break
    sleep 0.1
  done
  if alive "$p" "$name"; then
    log "$name (pid $p) still there 15 s after SIGTERM: SIGKILL"
    kill -KILL "$p" 2>/dev/null
  fi
  rm -f "$file"
  log "$name (pid $p) stopped"
}

if [ ! -e "$DIR/$MARKER" ]; then
  log "no cluster state in $DIR: nothing to stop"
  exit 0
fi

# Cancel the cluster's jobs first, so that their slurmstepd processes end with them.
if pid_of "$DIR/run/slurmctld.pid" slurmctld >/dev/null; then
  jobs=$(timeout 10 squeue -h -o '%A' 2>/dev/null | sort -u | tr '\n' ' ')
  if [ -n "${jobs// /}" ]; then
    log "cancelling jobs: $jobs"
    # shellcheck disable=SC2086
    timeout 10 scancel $jobs 2>/dev/null
    for ((i = 0; i < 200; i++)); do   # KillWait=5: SIGKILL comes 5 s after SIGTERM
      [ -z "$(timeout 5 squeue -h -o '%A' 2>/dev/null)" ] && break
      sleep 0.1
    done
    left=$(timeout 5 squeue -h -o '%A' 2>/dev/null | tr '\n' ' ')
    [ -z "${left// /}" ] || log "WARNING: jobs still listed after 20 s: $left"
  fi
fi

stop_daemon slurmd    "$DIR/run/slurmd.pid"
stop_daemon slurmctld "$DIR/run/slurmctld.pid"
stop_daemon slurmdbd  "$DIR/run/slurmdbd.pid"
stop_daemon mariadbd  "$DIR/run/mysqld/mariadbd.pid"
stop_daemon munged    "$DIR/run/munge/munged.pid"

if [ "$PURGE" = 1 ]; then
  rm -rf -- "$DIR" && log "removed $DIR"
fi
