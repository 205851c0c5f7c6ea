#!/usr/bin/env bash
# Starts and stops the local services emoflow talks to, as plain processes on
# 127.0.0.1 with their data in a scratch folder:
#
#   scripts/services.sh start   [kafka|redis|clickhouse ...]
#   scripts/services.sh stop    [kafka|redis|clickhouse ...]
#   scripts/services.sh restart [kafka|redis|clickhouse ...]
#   scripts/services.sh kill    SERVICE     (SIGKILL, for crash tests)
#   scripts/services.sh nice    N [SERVICE ...]  (every thread of the running services to niceness N)
#   scripts/services.sh status
#   scripts/services.sh env                 (prints the addresses as EMOFLOW_* variables)
#   scripts/services.sh wipe                (stop all, delete their data)
#
# start is idempotent: a service that is already up is left alone. Each start
# waits until the service answers. Ports and the state folder come from the
# environment (defaults in parentheses):
#   EMOFLOW_STATE          scratch folder (<repo>/.local/services)
#   EMOFLOW_KAFKA_PORT     (19092; the KRaft controller uses the next port)
#   EMOFLOW_REDIS_PORT     (16379)
#   EMOFLOW_CLICKHOUSE_PORT native protocol (19000); HTTP on EMOFLOW_CLICKHOUSE_HTTP_PORT (18123)
# and the secured listeners (see README "Security"), derived from those:
#   EMOFLOW_KAFKA_SASL_SSL_PORT        Kafka SASL_SSL listener (kafka port + 2)
#   EMOFLOW_REDIS_TLS_PORT             Redis TLS port (redis port + 1)
#   EMOFLOW_CLICKHOUSE_SECURE_PORT     ClickHouse secure native port (native port + 440)
# Their certificates (a throwaway CA) and credentials are made once per state
# folder, in $EMOFLOW_STATE/tls, never in the repository.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${EMOFLOW_CACHE:-$HOME/.cache/emoflow}
state=${EMOFLOW_STATE:-$repo/.local/services}
kafka_port=${EMOFLOW_KAFKA_PORT:-19092}
kafka_controller_port=$((kafka_port + 1))
redis_port=${EMOFLOW_REDIS_PORT:-16379}
ch_port=${EMOFLOW_CLICKHOUSE_PORT:-19000}
ch_http_port=${EMOFLOW_CLICKHOUSE_HTTP_PORT:-18123}
kafka_sasl_ssl_port=${EMOFLOW_KAFKA_SASL_SSL_PORT:-$((kafka_port + 2))}
redis_tls_port=${EMOFLOW_REDIS_TLS_PORT:-$((redis_port + 1))}
ch_secure_port=${EMOFLOW_CLICKHOUSE_SECURE_PORT:-$((ch_port + 440))}
tls=$state/tls
kafka_version=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$repo/deploy/local/kafka/pom.xml")

log() { printf 'services: %s\n' "$*" >&2; }

pid_of() { # prints the pid of a running service, or fails
	local f=$state/$1.pid
	[ -f "$f" ] || return 1
	local pid
	pid=$(cat "$f")
	kill -0 "$pid" 2>/dev/null || return 1
	echo "$pid"
}

wait_until() { # name timeout-seconds command...
	local name=$1 timeout=$2
	shift 2
	local deadline=$((SECONDS + timeout))
	until "$@" >/dev/null 2>&1; do
		if ! pid_of "$name" >/dev/null; then
			log "$name exited during start-up; last lines of its log:"
			tail -n 30 "$state/$name.log" >&2 || true
			return 1
		fi
		if [ $SECONDS -ge $deadline ]; then
			log "$name not ready after ${timeout}s; last lines of its log:"
			tail -n 30 "$state/$name.log" >&2 || true
			return 1
		fi
		sleep 0.2
	done
}

kafka_ready() { kcat -b "127.0.0.1:$kafka_port" -L -m 2 -t __probe_absent >/dev/null 2>&1 || kcat -b "127.0.0.1:$kafka_port" -L -m 2 >/dev/null; }
redis_ready() { [ "$(redis-cli -h 127.0.0.1 -p "$redis_port" ping 2>/dev/null)" = PONG ]; }
clickhouse_ready() { [ "$(curl -sf "http://127.0.0.1:$ch_http_port/ping")" = "Ok." ]; }

# make_secrets creates, once per state folder, a throwaway CA, a server
# certificate for 127.0.0.1/localhost, a client certificate (mTLS tests) and
# random passwords for the services' users, each in its own file (mode 600);
# only hashes of them go into the services' configuration where the service
# allows it.
make_secrets() {
	[ -f "$tls/done" ] && return 0
	mkdir -p "$tls"
	chmod 700 "$tls"
	openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=emoflow test CA" \
		-keyout "$tls/ca.key" -out "$tls/ca.crt" -addext "basicConstraints=critical,CA:TRUE" \
		-addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
	local who
	for who in server client; do
		openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$tls/$who.key" 2>/dev/null
		openssl req -new -key "$tls/$who.key" -subj "/CN=emoflow-$who" -out "$tls/$who.csr" 2>/dev/null
		openssl x509 -req -in "$tls/$who.csr" -CA "$tls/ca.crt" -CAkey "$tls/ca.key" -CAcreateserial \
			-days 3650 -out "$tls/$who.crt" \
			-extfile <(printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=%sAuth\n' "$who") 2>/dev/null
		rm -f "$tls/$who.csr"
	done
	cat "$tls/server.key" "$tls/server.crt" >"$tls/server-keystore.pem"
	for who in kafka-scram kafka-plain redis clickhouse; do
		(umask 077 && openssl rand -hex 20 | tr -d '\n' >"$tls/$who.password")
	done
	chmod 600 "$tls"/*.key "$tls"/*.pem
	touch "$tls/done"
}

start_kafka() {
	local libs=$cache/kafka-$kafka_version/libs
	[ -d "$libs" ] || "$repo/scripts/setup.sh" kafka
	local dir=$state/kafka
	mkdir -p "$dir"
	make_secrets
	(umask 077 && sed -e "s#@STATE@#$state#g" -e "s/@PORT@/$kafka_port/g" -e "s/@CONTROLLER_PORT@/$kafka_controller_port/g" \
		-e "s/@SASL_SSL_PORT@/$kafka_sasl_ssl_port/g" -e "s/@PLAIN_PASSWORD@/$(cat "$tls/kafka-plain.password")/g" \
		"$repo/deploy/local/kafka/server.properties" >"$dir/server.properties")
	local java_opts=(-Xms256m -Xmx1g -XX:+UseG1GC -Djava.awt.headless=true
		"-Dlog4j.configuration=file:$repo/deploy/local/kafka/log4j.properties")
	if [ ! -f "$dir/data/meta.properties" ]; then
		java "${java_opts[@]}" -cp "$libs/*" kafka.tools.StorageTool format \
			-t "$(java -cp "$libs/*" kafka.tools.StorageTool random-uuid 2>/dev/null)" \
			-c "$dir/server.properties" --add-scram "SCRAM-SHA-512=[name=emoflow-scram,password=$(cat "$tls/kafka-scram.password")]" \
			>>"$state/kafka.log" 2>&1
		touch "$dir/scram-user"
	fi
	setsid nohup java "${java_opts[@]}" -cp "$libs/*" kafka.Kafka "$dir/server.properties" >>"$state/kafka.log" 2>&1 &
	echo $! >"$state/kafka.pid"
	wait_until kafka 90 kafka_ready
	if [ ! -f "$dir/scram-user" ]; then # a state formatted before the SCRAM user existed
		java "${java_opts[@]}" -cp "$libs/*" kafka.admin.ConfigCommand --bootstrap-server "127.0.0.1:$kafka_port" \
			--alter --entity-type users --entity-name emoflow-scram \
			--add-config "SCRAM-SHA-512=[password=$(cat "$tls/kafka-scram.password")]" >>"$state/kafka.log" 2>&1
		touch "$dir/scram-user"
	fi
}

start_redis() {
	make_secrets
	mkdir -p "$state/redis"
	# default: the passwordless user of the plain-port tests; emoflow: the
	# result cache's user (its password stored as a SHA-256), limited to the
	# cache's commands and to keys starting with emoflow.
	printf '%s\n' "user default on nopass ~* &* +@all" \
		"user emoflow on #$(sha256sum "$tls/redis.password" | cut -d' ' -f1) ~emoflow* resetchannels -@all +@connection +get +mget +set +del +exists +ttl +expire +zadd +zcard +zrangebyscore +zrevrangebyscore +zremrangebyrank +hget +hset +pexpire +eval" \
		>"$state/redis/users.acl"
	setsid nohup redis-server --bind 127.0.0.1 --port "$redis_port" --save '' --appendonly no \
		--dir "$state/redis" --daemonize no --aclfile "$state/redis/users.acl" \
		--tls-port "$redis_tls_port" --tls-cert-file "$tls/server.crt" --tls-key-file "$tls/server.key" \
		--tls-ca-cert-file "$tls/ca.crt" --tls-auth-clients optional >>"$state/redis.log" 2>&1 &
	echo $! >"$state/redis.pid"
	wait_until redis 30 redis_ready
}

start_clickhouse() {
	local dir=$state/clickhouse
	mkdir -p "$dir"
	make_secrets
	sed -e "s#@STATE@#$state#g" -e "s/@HTTP_PORT@/$ch_http_port/" -e "s/@TCP_PORT@/$ch_port/" \
		-e "s/@TCP_PORT_SECURE@/$ch_secure_port/" \
		"$repo/deploy/local/clickhouse/config.xml" >"$dir/config.xml"
	sed -e "s/@SINK_PASSWORD_SHA256@/$(sha256sum "$tls/clickhouse.password" | cut -d' ' -f1)/" \
		"$repo/deploy/local/clickhouse/users.xml" >"$dir/users.xml"
	setsid nohup clickhouse-server --config-file="$dir/config.xml" >>"$state/clickhouse.log" 2>&1 &
	echo $! >"$state/clickhouse.pid"
	wait_until clickhouse 60 clickhouse_ready
}

start() {
	local s=$1
	if pid_of "$s" >/dev/null && "${s}_ready"; then
		return 0
	fi
	mkdir -p "$state"
	log "starting $s"
	"start_$s"
	log "$s ready (pid $(pid_of "$s"))"
}

stop() {
	local s=$1 pid
	pid=$(pid_of "$s") || { rm -f "$state/$s.pid"; return 0; }
	log "stopping $s (pid $pid)"
	kill -TERM "$pid" 2>/dev/null || true
	for _ in $(seq 1 150); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.2
	done
	if kill -0 "$pid" 2>/dev/null; then
		log "$s did not stop in 30s; killing it"
		kill -KILL "$pid" 2>/dev/null || true
	fi
	rm -f "$state/$s.pid"
}

hard_kill() {
	local s=$1 pid
	pid=$(pid_of "$s") || return 0
	kill -KILL "$pid"
	while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
	rm -f "$state/$s.pid"
}

print_env() {
	cat <<EOF
EMOFLOW_TEST_KAFKA_BROKERS=127.0.0.1:$kafka_port
EMOFLOW_TEST_REDIS_ADDR=127.0.0.1:$redis_port
EMOFLOW_TEST_CLICKHOUSE_ADDR=127.0.0.1:$ch_port
EMOFLOW_TEST_SERVICES_SCRIPT=$repo/scripts/services.sh
EMOFLOW_TEST_TLS_CA_FILE=$tls/ca.crt
EMOFLOW_TEST_TLS_CLIENT_CERT_FILE=$tls/client.crt
EMOFLOW_TEST_TLS_CLIENT_KEY_FILE=$tls/client.key
EMOFLOW_TEST_TLS_SERVER_CERT_FILE=$tls/server.crt
EMOFLOW_TEST_TLS_SERVER_KEY_FILE=$tls/server.key
EMOFLOW_TEST_KAFKA_SASL_SSL_BROKERS=127.0.0.1:$kafka_sasl_ssl_port
EMOFLOW_TEST_KAFKA_SCRAM_USER=emoflow-scram
EMOFLOW_TEST_KAFKA_SCRAM_PASSWORD_FILE=$tls/kafka-scram.password
EMOFLOW_TEST_KAFKA_PLAIN_USER=emoflow-plain
EMOFLOW_TEST_KAFKA_PLAIN_PASSWORD_FILE=$tls/kafka-plain.password
EMOFLOW_TEST_REDIS_TLS_ADDR=127.0.0.1:$redis_tls_port
EMOFLOW_TEST_REDIS_USER=emoflow
EMOFLOW_TEST_REDIS_PASSWORD_FILE=$tls/redis.password
EMOFLOW_TEST_CLICKHOUSE_SECURE_ADDR=127.0.0.1:$ch_secure_port
EMOFLOW_TEST_CLICKHOUSE_SINK_USER=emoflow_sink
EMOFLOW_TEST_CLICKHOUSE_SINK_DATABASE=emoflow_secure
EMOFLOW_TEST_CLICKHOUSE_SINK_PASSWORD_FILE=$tls/clickhouse.password
EOF
}

# renice_service name niceness: every thread, since renice -p changes one.
# Threads started later inherit it from the thread that starts them.
renice_service() {
	local pid task n=0
	if ! pid=$(pid_of "$1"); then
		log "$1 is not running"
		return 0
	fi
	for task in /proc/"$pid"/task/*; do
		if renice -n "$2" -p "${task##*/}" >/dev/null 2>&1; then n=$((n + 1)); fi
	done
	log "$1: $n threads at niceness $2"
}

all=(kafka redis clickhouse)
cmd=${1:-status}
shift || true
if [ "$cmd" = nice ]; then
	niceness=${1:?usage: services.sh nice N [SERVICE ...]}
	shift
fi
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=("${all[@]}")
for t in "${targets[@]}"; do
	case "$t" in kafka | redis | clickhouse) ;; *) log "unknown service $t"; exit 2 ;; esac
done

case "$cmd" in
start) for s in "${targets[@]}"; do start "$s"; done ;;
stop) for s in "${targets[@]}"; do stop "$s"; done ;;
restart) for s in "${targets[@]}"; do stop "$s"; start "$s"; done ;;
kill) for s in "${targets[@]}"; do hard_kill "$s"; done ;;
nice) for s in "${targets[@]}"; do renice_service "$s" "$niceness"; done ;;
status)
	rc=0
	for s in "${targets[@]}"; do
		if pid_of "$s" >/dev/null && "${s}_ready"; then echo "$s: up (pid $(pid_of "$s"))"; else echo "$s: down"; rc=1; fi
	done
	exit $rc
	;;
env) print_env ;;
wipe) for s in "${all[@]}"; do stop "$s"; done; rm -rf "$state" ;;
*) log "unknown command $cmd"; exit 2 ;;
esac
