# Sourced by scripts/test and .ci/run: makes sure a PostgreSQL server answers, and exports
# DATABASE_URL pointing at it. In order:
#   1. DATABASE_URL, if set and it answers (it is never replaced by another server);
#   2. the local default, postgres://postgres@127.0.0.1:5432/postgres;
#   3. the installed Debian/Ubuntu cluster, started with pg_ctlcluster;
#   4. a throwaway cluster in target/postgres (initdb, trust auth), stopped when the shell exits.
# The tests need prepared transactions (max_prepared_transactions > 0): on the local default
# server, when it is the installed cluster, this script turns them on once (ALTER SYSTEM and a
# restart: other runs against that server fail across the restart); the throwaway cluster
# starts with them on. A server named by DATABASE_URL is never changed.

_es_default_url="postgres://postgres@127.0.0.1:5432/postgres"

_es_pg_bin() {
    # The newest installed server binaries, or those on PATH.
    local dir
    for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        [ -x "$dir/initdb" ] && { echo "$dir"; return; }
    done
    command -v pg_config >/dev/null 2>&1 && [ -x "$(pg_config --bindir)/initdb" ] && { pg_config --bindir; return; }
    command -v initdb >/dev/null 2>&1 && dirname "$(command -v initdb)"
}

_es_answers() {
    # Whether a server answers at URL $1 (within a few seconds).
    local isready
    isready="$(command -v pg_isready || true)"
    [ -z "$isready" ] && [ -n "$(_es_pg_bin)" ] && isready="$(_es_pg_bin)/pg_isready"
    if [ -n "$isready" ] && [ -x "$isready" ]; then
        "$isready" -q -t 3 -d "$1"
    else
        # No client tools: a TCP probe of host:port.
        local hostport="${1#*@}"; hostport="${hostport%%/*}"
        timeout 3 bash -c "</dev/tcp/${hostport%:*}/${hostport##*:}" 2>/dev/null
    fi
}

_es_wait_for() {
    local i
    for i in $(seq 1 60); do
        _es_answers "$1" && return 0
        sleep 0.5
    done
    return 1
}

_es_psql() {
    # A psql client, if one is installed.
    if command -v psql >/dev/null 2>&1; then command -v psql; return; fi
    [ -n "$(_es_pg_bin)" ] && [ -x "$(_es_pg_bin)/psql" ] && echo "$(_es_pg_bin)/psql"
}

_es_local_cluster() {
    # The version of the installed cluster named main listening on port 5432, if one is online.
    command -v pg_lsclusters >/dev/null 2>&1 || return 0
    pg_lsclusters --no-header 2>/dev/null |
        awk '$2 == "main" && $3 == 5432 && $4 ~ /online/ { print $1; exit }'
}

_es_enable_prepared_transactions() {
    # On the local default server: if max_prepared_transactions is 0 and the server is the
    # installed cluster, set it to 64 and restart the cluster (once: the setting persists).
    local psql setting version
    psql="$(_es_psql)"
    [ -n "$psql" ] || return 0
    setting="$("$psql" -X -At -d "$DATABASE_URL" -c "SHOW max_prepared_transactions" 2>/dev/null)" || return 0
    [ "$setting" = 0 ] || return 0
    version="$(_es_local_cluster)"
    if [ -z "$version" ] || ! command -v pg_ctlcluster >/dev/null 2>&1; then
        echo "The server at $DATABASE_URL has max_prepared_transactions = 0 and is not an installed cluster this script can restart: run ALTER SYSTEM SET max_prepared_transactions = 64 and restart it, or the prepared-transaction test fails." >&2
        return 0
    fi
    echo "Enabling prepared transactions on the installed PostgreSQL $version cluster (restarting it)..." >&2
    "$psql" -X -q -d "$DATABASE_URL" -c "ALTER SYSTEM SET max_prepared_transactions = 64" || return 0
    pg_ctlcluster --skip-systemctl-redirect "$version" main restart || true
    _es_wait_for "$DATABASE_URL"
}

_es_as_postgres() {
    # PostgreSQL refuses to run as root; run its tools as the postgres system user then.
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

_es_ensure_postgres() {
    if [ -n "${DATABASE_URL:-}" ]; then
        if _es_wait_for "$DATABASE_URL"; then return 0; fi
        echo "DATABASE_URL is set but no server answers there; unset it to let this script find or start one." >&2
        return 1
    fi
    export DATABASE_URL="$_es_default_url"
    if _es_answers "$DATABASE_URL"; then
        _es_enable_prepared_transactions
        return
    fi

    if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
        local version
        for version in $(ls /etc/postgresql | sort -V -r); do
            if [ -d "/etc/postgresql/$version/main" ]; then
                echo "Starting the installed PostgreSQL $version cluster..." >&2
                pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
                if _es_wait_for "$DATABASE_URL"; then
                    _es_enable_prepared_transactions
                    return
                fi
            fi
        done
    fi

    local bin root data port
    bin="$(_es_pg_bin)"
    if [ -z "$bin" ]; then
        echo "No PostgreSQL server answers and no server binaries are installed: install PostgreSQL or set DATABASE_URL." >&2
        return 1
    fi
    root="$(pwd)/target/postgres"
    data="$root/data"
    port=54329
    mkdir -p "$root"
    [ "$(id -u)" = 0 ] && chown postgres: "$root"
    if [ ! -f "$data/PG_VERSION" ]; then
        echo "Creating a throwaway PostgreSQL cluster in $data..." >&2
        _es_as_postgres "$bin/initdb" -D "$data" -U postgres -A trust -E UTF8 --no-sync >/dev/null
    fi
    echo "Starting the throwaway cluster on port $port..." >&2
    _es_as_postgres "$bin/pg_ctl" start -w -D "$data" -l "$root/server.log" \
        -o "-p $port -c listen_addresses=127.0.0.1 -k $root -c fsync=off -c max_connections=200 -c max_prepared_transactions=64" >/dev/null
    trap "_es_as_postgres '$bin/pg_ctl' stop -m fast -D '$data' >/dev/null" EXIT
    export DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres"
    _es_wait_for "$DATABASE_URL"
}

_es_ensure_postgres
