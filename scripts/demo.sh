#!/usr/bin/env bash
# Runs the whole pipeline on the local services with demo traffic:
# classifier + ingest + sink, a producer of chat messages, then a report of
# what arrived in ClickHouse. Expects the services up and the binaries in
# bin/ (./task demo does both). Options (environment):
#   EMOFLOW_DEMO_MESSAGES  messages to send (2000)
#   EMOFLOW_DEMO_MODEL     a trained checkpoint folder to use instead of the
#                          tiny random model
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
state=${EMOFLOW_STATE:-$repo/.local/services}
demo=$repo/.local/demo
mkdir -p "$demo"
n=${EMOFLOW_DEMO_MESSAGES:-2000}
kafka=127.0.0.1:${EMOFLOW_KAFKA_PORT:-19092}
redis=127.0.0.1:${EMOFLOW_REDIS_PORT:-16379}
ch_port=${EMOFLOW_CLICKHOUSE_PORT:-19000}
db=emoflow_demo
run=demo-$(date +%s)

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

model=${EMOFLOW_DEMO_MODEL:-}
if [ -z "$model" ]; then
	model=$demo/tiny-model
	bin/emoctl tiny-model -out "$model"
	cat <<'EOF'

  ┌──────────────────────────────────────────────────────────────────────┐
  │ NOTE: no trained model is configured, so this demo runs a TINY,      │
  │ RANDOMLY INITIALISED ChatGLM3-architecture model. The pipeline is    │
  │ real; the labels it assigns are NOT meaningful. Set                  │
  │ EMOFLOW_DEMO_MODEL=/path/to/checkpoint to use trained weights.       │
  └──────────────────────────────────────────────────────────────────────┘
EOF
fi

pids=()
cleanup() {
	for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

start() { # name addr args...
	local name=$1 addr=$2
	shift 2
	"bin/$name" -http-addr "$addr" -log-format text "$@" >"$demo/$name.log" 2>&1 &
	pids+=($!)
	for _ in $(seq 1 600); do
		if curl -sf "http://$addr/readyz" >/dev/null; then
			echo "$name ready on http://$addr (log: .local/demo/$name.log)"
			return 0
		fi
		if ! kill -0 "${pids[-1]}" 2>/dev/null; then
			echo "$name exited; last lines of its log:" >&2
			tail -n 20 "$demo/$name.log" >&2
			return 1
		fi
		sleep 0.2
	done
	echo "$name not ready after 120s; see $demo/$name.log" >&2
	return 1
}

say "Starting classifier, sink and ingest"
start classifier 127.0.0.1:8080 -model-dir "$model"
start sink 127.0.0.1:9102 -kafka-brokers "$kafka" -clickhouse-addr "127.0.0.1:$ch_port" -clickhouse-database "$db"
start ingest 127.0.0.1:9101 -kafka-brokers "$kafka" -redis-addr "$redis" -classifier-urls http://127.0.0.1:8080

say "Producing $n chat messages"
bin/emoctl produce -kafka-brokers "$kafka" -n "$n" -id-prefix "$run"

say "Waiting for $n rows in ClickHouse ($db.events_dedup)"
q() { clickhouse-client --port "$ch_port" --query "$1"; }
started=$SECONDS
while :; do
	got=$(q "SELECT count() FROM $db.events_dedup WHERE message_id LIKE '$run-%'")
	printf '\r  %s / %s rows after %ss' "$got" "$n" $((SECONDS - started))
	[ "$got" -ge "$n" ] && break
	if [ $((SECONDS - started)) -gt 600 ]; then
		echo; echo "timed out; see the logs in .local/demo" >&2
		exit 1
	fi
	sleep 1
done
echo

say "Rows by label (this run)"
q "SELECT label, count() AS rows, round(100 * rows / $n, 1) AS pct FROM $db.events_dedup WHERE message_id LIKE '$run-%' GROUP BY label ORDER BY rows DESC FORMAT PrettyCompact"
say "Latency and cache (this run)"
q "SELECT count() AS rows, sum(cache_hit) AS cache_hits, round(quantile(0.5)(pipeline_ms), 1) AS pipeline_p50_ms, round(quantile(0.99)(pipeline_ms), 1) AS pipeline_p99_ms, round(avg(classify_ms), 1) AS classify_avg_ms FROM $db.events_dedup WHERE message_id LIKE '$run-%' FORMAT PrettyCompact"
say "Agreement with the data sets' ground truth (random model: expect chance)"
q "SELECT countIf(label = true_label) AS agree, count() AS labelled, round(100 * agree / labelled, 1) AS pct FROM $db.events_dedup WHERE message_id LIKE '$run-%' AND true_label != '' FORMAT PrettyCompact"

cat <<EOF

== Where to look next
  ClickHouse:   clickhouse-client --port $ch_port --query "SELECT * FROM $db.label_counts_per_minute ORDER BY minute DESC LIMIT 20"
  Events topic: kcat -b $kafka -t emotion.events -C -o -5 -e
  Metrics:      curl -s http://127.0.0.1:8080/metrics | grep emoflow_   (classifier; ingest :9101, sink :9102 — while running)
  Classify:     bin/classifier -model-dir $model, then
                curl -s -XPOST 127.0.0.1:8080/v1/classify -d '{"texts":["I love this!"]}'
  Logs:         .local/demo/*.log
  Services keep running; stop them with ./task services:stop
EOF
