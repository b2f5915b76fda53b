#!/usr/bin/env bash
# Applies nhjc's broker settings (config/mosquitto/nhjc.conf) to a local Mosquitto whose
# configuration lives in CONF_DIR (default /etc/mosquitto), and restarts that broker only
# when something changed.  scripts/setup.sh runs it; safe to run again.
#
#   scripts/broker-settings.sh [--restart COMMAND] [CONF_DIR]
#
# The file is installed into the main file's include_dir (Debian's mosquitto.conf ends
# with `include_dir /etc/mosquitto/conf.d`); where the main file has no include_dir, one
# is appended.  Mosquitto reads include_dir only from the main file, in alphabetical
# order, and refuses some options twice (persistence_location, pid_file, password_file,
# acl_file...): nhjc.conf sets none of those.  An option nhjc.conf sets that another
# file sets differently is reported (which one wins depends on the order).
#
# COMMAND (run with bash -c) restarts the broker; by default the broker named by the
# main file's pid_file is stopped with SIGTERM (it saves its persistence) and started
# again with `mosquitto -d -c MAIN`.  If the broker does not come back, the previous
# files are restored and it is started with them; the exit code is then 1.
set -euo pipefail
SRC=$(cd "$(dirname "$0")/.." && pwd)/config/mosquitto/nhjc.conf
RESTART=""
if [ "${1:-}" = "--restart" ]; then RESTART=$2; shift 2; fi
CONF_DIR=${1:-/etc/mosquitto}
MAIN=$CONF_DIR/mosquitto.conf
log() { printf 'setup: mosquitto: %s\n' "$*" >&2; }

[ -f "$MAIN" ] || { log "no $MAIN"; exit 1; }

# Uncommented values of an option in a file: `conf_values KEY FILE`.
conf_values() { awk -v k="$1" '$1 == k { $1 = ""; sub(/^ /, ""); print }' "$2"; }

INCLUDE=$(conf_values include_dir "$MAIN" | head -n1)
BACKUP=$(mktemp -d)
trap 'rm -rf "$BACKUP"' EXIT
cp -p "$MAIN" "$BACKUP/main"
changed=""
if [ -z "$INCLUDE" ]; then
    INCLUDE=$CONF_DIR/conf.d
    log "adding include_dir $INCLUDE to $MAIN"
    printf '\n# Added by nhjc scripts/setup.sh: settings files such as conf.d/nhjc.conf.\ninclude_dir %s\n' \
        "$INCLUDE" >>"$MAIN"
    changed=1
fi
mkdir -p "$INCLUDE"
DEST=$INCLUDE/nhjc.conf
[ ! -f "$DEST" ] || cp -p "$DEST" "$BACKUP/dest"
if ! cmp -s "$SRC" "$DEST"; then
    log "installing $DEST"
    install -m 0644 "$SRC" "$DEST"
    changed=1
fi

# Options nhjc.conf sets that another file of this broker sets to something else.
while read -r key value; do
    for f in "$MAIN" "$INCLUDE"/*.conf; do
        [ "$f" = "$DEST" ] || [ ! -f "$f" ] && continue
        conf_values "$key" "$f" | while read -r other; do
            [ "$other" = "$value" ] || log "warning: $f sets $key $other, nhjc.conf sets $key $value"
        done
    done
done < <(awk '$1 !~ /^#/ && NF >= 2 { print $1, $2 }' "$SRC")

if [ -z "$changed" ]; then
    log "settings up to date ($DEST)"
    exit 0
fi

# The first listener's port (Mosquitto listens on 1883 when none is configured).
listen_port() {
    local p
    p=$(cat "$MAIN" "$INCLUDE"/*.conf 2>/dev/null | awk '$1 == "listener" { print $2; exit }')
    echo "${p:-1883}"
}
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

default_restart() {
    local pidfile pid i
    pidfile=$(conf_values pid_file "$MAIN" | head -n1)
    if [ -n "$pidfile" ] && [ -s "$pidfile" ]; then
        pid=$(cat "$pidfile")
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid"
            for i in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            if kill -0 "$pid" 2>/dev/null; then log "broker $pid did not stop"; return 1; fi
        fi
    elif listening "$(listen_port)"; then
        log "a broker listens on $(listen_port) but $MAIN names no pid_file to restart it by"
        return 1
    fi
    mosquitto -d -c "$MAIN"
}

restart() {
    if [ -n "$RESTART" ]; then bash -c "$RESTART"; else default_restart; fi || return 1
    local port i
    port=$(listen_port)
    for i in $(seq 100); do listening "$port" && return 0; sleep 0.1; done
    log "nothing listens on $port after the restart"
    return 1
}

log "restarting the broker to apply its settings"
if restart; then
    log "restarted with $DEST"
    exit 0
fi
log "the broker did not come back: restoring the previous settings"
cp -p "$BACKUP/main" "$MAIN"
if [ -f "$BACKUP/dest" ]; then cp -p "$BACKUP/dest" "$DEST"; else rm -f "$DEST"; fi
restart || log "the broker does not start with its previous settings either: see its log"
exit 1
