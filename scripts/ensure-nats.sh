# Sourced by scripts/test (bash, set -euo pipefail): makes sure a NATS server with JetStream
# answers, and exports NATS_URL pointing at it. In order:
#   1. NATS_URL, if set and it answers (it is never replaced by another server);
#   2. the local default, nats://127.0.0.1:4222;
#   3. the installed nats-server, started in the background with JetStream on
#      (store /var/lib/nats-server, log /var/log/nats-server.log).

_es_nats_default_url="nats://127.0.0.1:4222"

_es_nats_answers() {
    # Whether a NATS server greets at URL $1 (its INFO line) within a few seconds.
    local hostport="${1#*://}"
    hostport="${hostport#*@}"
    hostport="${hostport%%/*}"
    timeout 3 bash -c "exec 3<>/dev/tcp/${hostport%:*}/${hostport##*:} && head -c 4 <&3 | grep -q INFO" 2>/dev/null
}

_es_nats_wait_for() {
    local i
    for i in $(seq 1 60); do
        _es_nats_answers "$1" && return 0
        sleep 0.5
    done
    return 1
}

_es_ensure_nats() {
    if [ -n "${NATS_URL:-}" ]; then
        if _es_nats_wait_for "$NATS_URL"; then return 0; fi
        echo "NATS_URL is set but no NATS server answers there; unset it to let this script start the local one." >&2
        return 1
    fi
    export NATS_URL="$_es_nats_default_url"
    _es_nats_answers "$NATS_URL" && return 0
    if [ ! -x /usr/sbin/nats-server ]; then
        echo "No NATS server answers at $NATS_URL and /usr/sbin/nats-server is not installed: install nats-server or set NATS_URL." >&2
        return 1
    fi
    echo "Starting nats-server with JetStream on 127.0.0.1:4222..." >&2
    mkdir -p /var/lib/nats-server
    start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- \
        -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log
    if ! _es_nats_wait_for "$NATS_URL"; then
        echo "nats-server did not answer at $NATS_URL within 30 s; see /var/log/nats-server.log." >&2
        return 1
    fi
}

_es_ensure_nats
