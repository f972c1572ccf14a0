# Sourced by scripts/test and .ci/run: makes sure a PostgreSQL server answers, and exports
# DATABASE_URL pointing at it. In order:
#   1. DATABASE_URL, if set and it answers (it is never replaced by another server);
#   2. the local default, postgres://postgres@127.0.0.1:5432/postgres;
#   3. the installed Debian/Ubuntu cluster, started with pg_ctlcluster;
#   4. a throwaway cluster in target/postgres (initdb, trust auth), stopped when the shell exits.

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
    _es_answers "$DATABASE_URL" && return 0

    if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
        local version
        for version in $(ls /etc/postgresql | sort -V -r); do
            if [ -d "/etc/postgresql/$version/main" ]; then
                echo "Starting the installed PostgreSQL $version cluster..." >&2
                pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
                _es_wait_for "$DATABASE_URL" && return 0
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
        -o "-p $port -c listen_addresses=127.0.0.1 -k $root -c fsync=off -c max_connections=200" >/dev/null
    trap "_es_as_postgres '$bin/pg_ctl' stop -m fast -D '$data' >/dev/null" EXIT
    export DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres"
    _es_wait_for "$DATABASE_URL"
}

_es_ensure_postgres
