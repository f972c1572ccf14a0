# Sourced by scripts/test (bash, set -euo pipefail): makes sure a Kafka-compatible broker answers,
# and exports KAFKA_BROKERS (the bootstrap servers, default 127.0.0.1:9092) for the tests of
# eventsource-relay-kafka. In order:
#   1. KAFKA_BROKERS, if set and its first host:port answers (it is never replaced);
#   2. a broker already answering on 127.0.0.1:9092;
#   3. tansu (https://github.com/tansu-io/tansu, a Kafka-compatible broker in one binary),
#      started in the background with its in-memory storage engine, logging to
#      target/kafka/tansu.log; it is left running for later runs. When tansu is not installed,
#      it is installed first with cargo (about 8 minutes on an idle 2-core machine, 27 on a busy
#      one; a 56 MB binary in ~/.cargo/bin).
# tansu's memory engine keeps nothing across a restart of the broker: restart it freely.

_es_kafka_default="127.0.0.1:9092"

_es_kafka_answers() {
    # Whether something accepts TCP connections at host:port $1 (within a few seconds).
    timeout 3 bash -c "</dev/tcp/${1%:*}/${1##*:}" 2>/dev/null
}

_es_kafka_wait_for() {
    local i
    for i in $(seq 1 120); do
        _es_kafka_answers "$1" && return 0
        sleep 0.5
    done
    return 1
}

_es_tansu_bin() {
    if command -v tansu >/dev/null 2>&1; then command -v tansu; return; fi
    [ -x "$HOME/.cargo/bin/tansu" ] && echo "$HOME/.cargo/bin/tansu"
    return 0
}

_es_ensure_kafka() {
    if [ -n "${KAFKA_BROKERS:-}" ]; then
        local first="${KAFKA_BROKERS%%,*}"
        if _es_kafka_wait_for "$first"; then return 0; fi
        echo "KAFKA_BROKERS is set to $KAFKA_BROKERS but nothing answers at $first; unset it to let this script start a local broker." >&2
        return 1
    fi
    export KAFKA_BROKERS="$_es_kafka_default"
    if _es_kafka_answers "$KAFKA_BROKERS"; then return 0; fi

    local tansu
    tansu="$(_es_tansu_bin)"
    if [ -z "$tansu" ]; then
        echo "No Kafka broker answers on $KAFKA_BROKERS and tansu is not installed: installing it with cargo (takes about 8 minutes or more; the memory:// storage engine needs the feature dynostore)..." >&2
        cargo install tansu --locked --features dynostore >&2
        tansu="$(_es_tansu_bin)"
        if [ -z "$tansu" ]; then
            echo "cargo install tansu finished but no tansu binary is on PATH or in ~/.cargo/bin; install a Kafka broker and set KAFKA_BROKERS." >&2
            return 1
        fi
    fi
    local root
    root="$(pwd)/target/kafka"
    mkdir -p "$root"
    echo "Starting tansu on $KAFKA_BROKERS (in memory; log in $root/tansu.log)..." >&2
    setsid nohup "$tansu" broker \
        --listener-url "tcp://$KAFKA_BROKERS" \
        --advertised-listener-url "tcp://$KAFKA_BROKERS" \
        --storage-engine memory://tansu/ \
        >"$root/tansu.log" 2>&1 </dev/null &
    echo $! >"$root/tansu.pid"
    if ! _es_kafka_wait_for "$KAFKA_BROKERS"; then
        echo "tansu did not answer on $KAFKA_BROKERS within 60 s; see $root/tansu.log." >&2
        return 1
    fi
}

_es_ensure_kafka
