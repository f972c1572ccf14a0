# Sourced by scripts/test (bash, set -euo pipefail): makes sure a RabbitMQ broker answers on
# 127.0.0.1, and exports RABBITMQ_URL pointing at it. In order:
#   1. RABBITMQ_URL, if set and its host:port answers (it is never replaced by another broker);
#   2. the local default, amqp://guest:guest@127.0.0.1:5672/%2f;
#   3. the installed broker, started with `rabbitmq-server -detached` (or `rabbitmqctl
#      start_app` when its node runs with the application stopped), then awaited.

_es_rabbitmq_default_url="amqp://guest:guest@127.0.0.1:5672/%2f"

_es_rabbitmq_answers() {
    # Whether host:port of the AMQP URL $1 accepts a TCP connection (within a few seconds).
    local hostport="${1#*://}"
    hostport="${hostport#*@}"
    hostport="${hostport%%/*}"
    case "$hostport" in *:*) ;; *) hostport="$hostport:5672" ;; esac
    timeout 3 bash -c "</dev/tcp/${hostport%:*}/${hostport##*:}" 2>/dev/null
}

_es_rabbitmq_wait_for() {
    local i
    for i in $(seq 1 120); do
        _es_rabbitmq_answers "$1" && return 0
        sleep 0.5
    done
    return 1
}

_es_ensure_rabbitmq() {
    if [ -n "${RABBITMQ_URL:-}" ]; then
        if _es_rabbitmq_wait_for "$RABBITMQ_URL"; then return 0; fi
        echo "RABBITMQ_URL is set but no broker answers there; unset it to let this script find or start one." >&2
        return 1
    fi
    export RABBITMQ_URL="$_es_rabbitmq_default_url"
    _es_rabbitmq_answers "$RABBITMQ_URL" && return 0

    if ! command -v rabbitmq-server >/dev/null 2>&1; then
        echo "No RabbitMQ broker answers on 127.0.0.1:5672 and rabbitmq-server is not installed: install RabbitMQ (apt-get install rabbitmq-server) or set RABBITMQ_URL." >&2
        return 1
    fi
    if rabbitmqctl -q status >/dev/null 2>&1; then
        # The node runs but the application is stopped (after `rabbitmqctl stop_app`).
        echo "Starting the RabbitMQ application (rabbitmqctl start_app)..." >&2
        rabbitmqctl -q start_app >/dev/null || true
    else
        echo "Starting RabbitMQ (rabbitmq-server -detached)..." >&2
        rabbitmq-server -detached >/dev/null 2>&1 || true
    fi
    timeout 90 rabbitmqctl -q await_startup >/dev/null 2>&1 || true
    if ! _es_rabbitmq_wait_for "$RABBITMQ_URL"; then
        echo "RabbitMQ did not start answering on 127.0.0.1:5672 within a minute; see its log in /var/log/rabbitmq." >&2
        return 1
    fi
}

_es_ensure_rabbitmq
