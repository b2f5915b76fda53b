#!/usr/bin/env bash
# One idempotent set-up for a Debian 12 machine (run as root, or with sudo available):
# Mosquitto (with nhjc's broker settings) and PostgreSQL 15 installed and running,
# TimescaleDB built from Debian's source package for the local PostgreSQL, the nhjc role
# and database, and a virtual environment (.venv) with the project in it.  Safe to run
# again; quick when done.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
log() { printf 'setup: %s\n' "$*" >&2; }

APT_UPDATED=""
apt_install() {
    if [ -z "$APT_UPDATED" ]; then $SUDO apt-get update -qq; APT_UPDATED=1; fi
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# --- Mosquitto -------------------------------------------------------------------
if ! command -v mosquitto >/dev/null; then
    log "installing mosquitto"; apt_install mosquitto mosquitto-clients
fi
# nhjc's broker settings (offline queue, packet size, persistence) as an include of the
# local broker's configuration; the broker restarts only when they changed.
$SUDO mkdir -p /run/mosquitto /var/lib/mosquitto /var/log/mosquitto
$SUDO chown mosquitto: /run/mosquitto /var/lib/mosquitto /var/log/mosquitto 2>/dev/null || true
RESTART=()
if [ -d /run/systemd/system ] && systemctl is-enabled --quiet mosquitto 2>/dev/null; then
    RESTART=(--restart "systemctl restart mosquitto")
fi
$SUDO bash scripts/broker-settings.sh "${RESTART[@]}" /etc/mosquitto
if ! (exec 3<>/dev/tcp/127.0.0.1/1883) 2>/dev/null; then
    log "starting mosquitto"
    $SUDO mosquitto -d -c /etc/mosquitto/mosquitto.conf
fi
command -v prometheus >/dev/null || apt_install prometheus

# --- PostgreSQL 15 -----------------------------------------------------------------
PGVER=15
if [ ! -x /usr/lib/postgresql/$PGVER/bin/postgres ]; then
    log "installing postgresql-$PGVER"; apt_install postgresql-$PGVER postgresql-client-$PGVER
fi
pg_running() { pg_lsclusters -h 2>/dev/null | awk -v v=$PGVER '$1==v && $2=="main" {print $4}' | grep -q online; }
if ! pg_running; then
    log "starting postgresql"; $SUDO pg_ctlcluster --skip-systemctl-redirect $PGVER main start
fi
as_postgres() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else sudo -u postgres "$@"; fi; }
psql_admin() { as_postgres env PGOPTIONS=--client-min-messages=warning psql -X -q -v ON_ERROR_STOP=1 "$@"; }

# --- TimescaleDB (no binary package in Debian 12: build Debian's source package) ---
PKGLIB=$(/usr/lib/postgresql/$PGVER/bin/pg_config --pkglibdir)
if [ ! -f "$PKGLIB/timescaledb.so" ]; then
    log "building TimescaleDB from Debian's source package (about a minute)"
    SRCLIST=/etc/apt/sources.list.d/nhjc-timescaledb-src.sources
    if ! apt-cache showsrc timescaledb 2>/dev/null | grep -q '^Package: timescaledb'; then
        # Debian 13 (trixie) carries timescaledb; its source builds against PostgreSQL 15.
        $SUDO tee "$SRCLIST" >/dev/null <<'SRC'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
        APT_UPDATED=""
    fi
    apt_install cmake make gcc dpkg-dev postgresql-server-dev-$PGVER
    BUILD=$(mktemp -d)
    (cd "$BUILD" && apt-get source -qq --download-only timescaledb >/dev/null \
        && dpkg-source -x --no-check ./*.dsc src >/dev/null \
        && cmake -S src -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo \
             -DPG_CONFIG=/usr/lib/postgresql/$PGVER/bin/pg_config \
             -DAPACHE_ONLY=ON -DSEND_TELEMETRY_DEFAULT=OFF -DUSE_TELEMETRY=OFF \
             -DREGRESS_CHECKS=OFF -DTAP_CHECKS=OFF -DWARNINGS_AS_ERRORS=OFF >/dev/null \
        && make -s -C build -j"$(nproc)" >/dev/null && $SUDO make -s -C build install >/dev/null)
    rm -rf "$BUILD"
fi
if ! psql_admin -tAc "SHOW shared_preload_libraries" | grep -q timescaledb; then
    log "preloading timescaledb and restarting postgresql"
    psql_admin -c "ALTER SYSTEM SET shared_preload_libraries = 'timescaledb'"
    $SUDO pg_ctlcluster --skip-systemctl-redirect $PGVER main restart
fi

# --- Role and database -------------------------------------------------------------
psql_admin -c "DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'nhjc') THEN CREATE ROLE nhjc LOGIN CREATEDB; END IF;
END \$\$"
if [ "$(psql_admin -tAc "SELECT 1 FROM pg_database WHERE datname = 'nhjc'")" != "1" ]; then
    psql_admin -c "CREATE DATABASE nhjc OWNER nhjc"
fi
psql_admin -d nhjc -c "CREATE EXTENSION IF NOT EXISTS timescaledb"

# The tests and the demo connect over loopback without a password (as the nhjc role,
# and as postgres to create test databases).  Debian's default asks for one: on such a
# machine allow it for these two roles on 127.0.0.1 only (a development set-up).
if ! psql -X -q -h 127.0.0.1 -U nhjc -d nhjc -c "SELECT 1" >/dev/null 2>&1 \
   || ! psql -X -q -h 127.0.0.1 -U postgres -d postgres -c "SELECT 1" >/dev/null 2>&1; then
    HBA=$(psql_admin -tAc "SHOW hba_file")
    log "allowing passwordless loopback connections for nhjc and postgres in $HBA"
    as_postgres sed -i '1i host all nhjc,postgres 127.0.0.1/32 trust  # nhjc development set-up' "$HBA"
    psql_admin -c "SELECT pg_reload_conf()" >/dev/null
fi

# --- Python environment ------------------------------------------------------------
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    log "creating .venv"
    "$PY" -m venv .venv 2>/dev/null || { apt_install python3-venv; "$PY" -m venv .venv; }
fi
STAMP=.venv/.nhjc-installed
if [ ! -f $STAMP ] || ! cmp -s pyproject.toml $STAMP; then
    log "installing nhjc into .venv"
    .venv/bin/pip install -q --disable-pip-version-check -e ".[test]"
    cp pyproject.toml $STAMP
fi
log "ready: $ROOT/.venv/bin/nhjc"
