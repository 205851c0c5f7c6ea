#!/usr/bin/env bash
# Runs the whole pipeline on the local services with demo traffic:
# classifier + ingest + sink + alerter, a producer of chat messages, then a report of
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
adapter_args=()
if [ -z "$model" ]; then
	# The demo model: a small ChatGLM3-architecture base pretrained on this
	# machine and two adapters trained on GoEmotions-ekman, built once by
	# emoctl demo-model and cached by recipe under $EMOFLOW_CACHE.
	say "Demo model (built on first use, about 10 minutes; cached afterwards)"
	cat <<'EOF'

  ┌──────────────────────────────────────────────────────────────────────┐
  │ This demo runs a SMALL ChatGLM3-architecture model (about 5 million  │
  │ parameters, not ChatGLM3-6B) that this machine pretrained from       │
  │ scratch on the train splits of the shared data sets, with two        │
  │ adapters trained here by emoctl train on GoEmotions-ekman:           │
  │   ekman-lora     LoRA r=8 (serves the live traffic)                  │
  │   ekman-ptuning  P-tuning v2, 32 virtual tokens (loaded beside it)   │
  │ No pretrained ChatGLM weights can be downloaded here; set            │
  │ EMOFLOW_DEMO_MODEL=/path/to/chatglm3-6b to use real ones.            │
  └──────────────────────────────────────────────────────────────────────┘
EOF
	built=$(bin/emoctl demo-model -data-dir "${EMOFLOW_SHARED:-../shared}/data")
	model=$built/base
	adapter_args=(-adapters-dir "$built/adapters" -default-adapter ekman-lora)
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

say "Starting classifier, sink, alerter and ingest"
start classifier 127.0.0.1:8080 -model-dir "$model" "${adapter_args[@]}"
start sink 127.0.0.1:9102 -kafka-brokers "$kafka" -clickhouse-addr "127.0.0.1:$ch_port" -clickhouse-database "$db"
# After the sink: its migrations create the alerts table the alerter waits for.
start alerter 127.0.0.1:9103 -kafka-brokers "$kafka" -redis-addr "$redis" -clickhouse-addr "127.0.0.1:$ch_port" \
	-clickhouse-database "$db" -rules deploy/alerts/rules.json -redis-key-prefix "emoflow:alerts:$db:"
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
say "Agreement with the data sets' ground truth (this run, the default adapter)"
q "SELECT countIf(label = true_label) AS agree, count() AS labelled, round(100 * agree / labelled, 1) AS pct FROM $db.events_dedup WHERE message_id LIKE '$run-%' AND true_label != '' FORMAT PrettyCompact"

say "Escalation alerts (this run; rules: deploy/alerts/rules.json)"
# The alerter trails the sink by a batch or so: wait until it has committed
# every event it fetched (its consumer lag is 0 on every partition), at
# most about a minute.
# The lag must read 0 twice, more than the alerter's 2 s reorder window
# apart: events it holds back to restore message order count as lag, but
# a fetch can lag the metric.
alerter_idle() { curl -s 127.0.0.1:9103/metrics | awk '/^emoflow_alerter_consumer_lag\{/ {n++; s += $2} END {exit !(n > 0 && s == 0)}'; }
for _ in $(seq 1 60); do
	if alerter_idle; then
		sleep 3
		alerter_idle && break
	fi
	sleep 0.5
done
alerts=$(q "SELECT count() FROM $db.alerts_dedup WHERE message_id LIKE '$run-%'")
if [ "$alerts" -gt 0 ]; then
	q "SELECT rule, count() AS alerts, uniqExact(conversation_id) AS conversations FROM $db.alerts_dedup WHERE message_id LIKE '$run-%' GROUP BY rule ORDER BY rule FORMAT PrettyCompact"
else
	echo "  no alert: no conversation crossed a rule ($(q "SELECT uniqExact(conversation_id) FROM $db.events_dedup WHERE run_id = 'live' AND message_id LIKE '$run-%' AND speaker_role = 'customer'") conversations with customer messages watched)"
fi

if [ ${#adapter_args[@]} -gt 0 ]; then
	say "The two adapters side by side (POST /v1/classify)"
	for a in ekman-lora ekman-ptuning; do
		curl -s -XPOST 127.0.0.1:8080/v1/classify -d '{"adapter":"'"$a"'","texts":["I love this, thank you so much!","This is the worst service I have ever had.","I am really worried about my account.","My dog died yesterday.","Wait, what? I did not expect that at all!"]}' |
			python3 -c 'import json,sys; r=json.load(sys.stdin); print("  %-14s" % r["adapter"].split("@")[0], "  ".join("%s (%.2f)" % (x["label"], x["probabilities"][x["label"]]) for x in r["results"]))'
	done
fi

cat <<EOF

== Where to look next
  ClickHouse:   clickhouse-client --port $ch_port --query "SELECT * FROM $db.label_counts_per_minute ORDER BY minute DESC LIMIT 20"
  Events topic: kcat -b $kafka -t emotion.events -C -o -5 -e
  Alerts topic: kcat -b $kafka -t emotion.alerts -C -o -5 -e   (and $db.alerts_dedup in ClickHouse)
  Metrics:      curl -s http://127.0.0.1:8080/metrics | grep emoflow_   (classifier; ingest :9101, sink :9102, alerter :9103 — while running)
  Classify:     bin/classifier -model-dir $model ${adapter_args[*]}, then
                curl -s -XPOST 127.0.0.1:8080/v1/classify -d '{"texts":["I love this!"]}'
  Logs:         .local/demo/*.log
  Services keep running; stop them with ./task services:stop
EOF
