#!/bin/bash
# psql/libpq with a token key given as a key-reference file (sslkey=REF,
# mode 0600, owned by the user), OPENSSL_CONF loading the provider, against
# a PostgreSQL server started here in the temp dir (initdb; ssl=on;
# pg_hba `hostssl ... cert`, i.e. clientcert=verify-full; 127.0.0.1 on a
# free port). The server runs as the postgres user when the test runs as
# root (postgres refuses root); psql runs as the agent's owner. The
# server's own view (pg_stat_ssl of the session) must show TLS, the
# protocol and the token key's certificate as the client's.
. "$(dirname "$0")/lib-prog.sh"

prog_require psql
PGBIN=$(find /usr/lib/postgresql -path '*/bin/postgres' 2>/dev/null | sort -V | tail -n 1)
PGBIN=${PGBIN%/postgres}
if [ -z "$PGBIN" ] || [ ! -x "$PGBIN/initdb" ]; then
	tap_bail "PostgreSQL server not installed (tests/packages.sh lists its package)"
fi
prog_setup
prog_unsanitized psql

# PG_RUN CMD...: run CMD as the server's user (postgres when we are root),
# without the provider's OPENSSL_CONF or the ASan preload (the server does
# not use the provider).
PG_USER=$(id -un)
PG_RUN=(env -u OPENSSL_CONF -u LD_PRELOAD)
if [ "$(id -u)" -eq 0 ]; then
	PG_USER=postgres
	id postgres >/dev/null 2>&1 || tap_bail "no postgres user (the postgresql package makes it)"
	PG_RUN=(setpriv --reuid=postgres --regid="$(id -g postgres)" --init-groups "${PG_RUN[@]}")
fi

# pg_start: initdb and postgres in $T/pg, TLS with the software server key
# (software: only the client's key is on the token here).
pg_start() {
	local d=$T/pg try
	chmod 0711 "$T" # the server's user reaches its own directory only
	mkdir -p "$d"
	cp "$T/server.pem" "$T/server.key" "$T/ca.pem" "$d/"
	chmod 0600 "$d/server.key"
	[ "$PG_USER" = "$(id -un)" ] || chown -R "$PG_USER:" "$d"
	with_timeout 120 "${PG_RUN[@]}" "$PGBIN/initdb" -D "$d/data" \
		-U postgres -A trust -E UTF8 --no-sync >"$T/initdb.log" 2>&1 ||
		{ cat "$T/initdb.log" >&2; return 1; }
	cat >"$d/data/pg_hba.conf" <<EOC
local all postgres trust
hostssl all all 127.0.0.1/32 cert map=cn
EOC
	echo 'cn /^(.*)$ postgres' >"$d/data/pg_ident.conf"
	for ((try = 0; try < 3; try++)); do
		PG_PORT=$(free_port)
		cat >>"$d/data/postgresql.conf" <<EOC
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$d'
ssl = on
ssl_cert_file = '$d/server.pem'
ssl_key_file = '$d/server.key'
ssl_ca_file = '$d/ca.pem'
ssl_min_protocol_version = 'TLSv1.2'
fsync = off
max_connections = 10
shared_buffers = 16MB
log_connections = on
EOC
		bg postgres "${PG_RUN[@]}" "$PGBIN/postgres" -D "$d/data"
		PG_PID=$BG_PID
		wait_listen "$PG_PORT" "$PG_PID" 20 && return 0
		grep -qi 'in use' "$T/postgres.log" || break
	done
	echo "postgres did not start:" >&2
	cat "$T/postgres.log" >&2
	return 1
}

# query PROTO CERT KEY: psql over TLS PROTO (libpq's ssl_min/max), full
# verification of the server; prints the server's pg_stat_ssl row.
query() {
	local proto=$1 cert=$2 key=$3 v
	v=$(proto_name "$proto")
	with_timeout "$IT_TIMEOUT" "${PROG_ENV[@]}" PGCONNECT_TIMEOUT=20 psql -X -A -t \
		-d "host=127.0.0.1 port=$PG_PORT dbname=postgres user=postgres sslmode=verify-full sslrootcert=$T/ca.pem sslcert=$cert sslkey=$key ssl_min_protocol_version=$v ssl_max_protocol_version=$v" \
		-c 'select ssl, version, client_dn from pg_stat_ssl where pid = pg_backend_pid()'
}

# psql_case PROTO KEY CERT KEYFILE
psql_case() {
	local proto=$1 k=$2 cert=$3 key=$4 out
	sig_mark || return 1
	out=$(query "$proto" "$cert" "$key") || { echo "psql failed" >&2; tail -n 5 "$T/postgres.log" >&2; return 1; }
	echo "server: $out"
	if ! [[ $out =~ ^t\|$(proto_name "$proto")\|.*CN=$k$ ]]; then
		echo "the server's pg_stat_ssl is not TLS, $(proto_name "$proto"), CN=$k" >&2
		return 1
	fi
	case $k in
	soft-*) ;;
	*) sig_signed ;;
	esac
}

pg_start || tap_bail "cannot start PostgreSQL"

tap_case "harness: software p256 key, TLS 1.3" \
	psql_case tls1_3 soft-p256 "$T/soft/p256.pem" "$T/soft/p256.key"

# PostgreSQL 15 gives OpenSSL one ECDH group, ssl_ecdh_curve (default
# prime256v1, SSL_CTX_set_tmp_ecdh); in TLS 1.2 OpenSSL then refuses a
# client's ECDSA certificate on any other curve ("wrong curve", alert
# illegal parameter), whatever holds the key. Shown with a software key;
# the p384 TLS 1.2 case switches the server to secp384r1 (a reload).
wrong_curve() {
	local out rc=0 i
	out=$(query tls1_2 "$T/soft/p384.pem" "$T/soft/p384.key" 2>&1) || rc=$?
	echo "$out"
	[ "$rc" -ne 0 ] || { echo "PostgreSQL 15 accepted P-384 in TLS 1.2 with ssl_ecdh_curve prime256v1" >&2; return 1; }
	# the server logs the reason a moment after the client saw the alert
	for ((i = 0; i < 40; i++)); do
		grep -q 'wrong curve' "$T/postgres.log" && return 0
		sleep 0.05
	done
	echo "no 'wrong curve' in the server log" >&2
	return 1
}
tap_case "harness: software p384 key, TLS 1.2, server ssl_ecdh_curve prime256v1: 'wrong curve'" wrong_curve

# pg_curve NAME: set ssl_ecdh_curve and reload, wait until the server says
# it took the value.
pg_curve() {
	local i
	echo "ssl_ecdh_curve = '$1'" >>"$T/pg/data/postgresql.conf"
	kill -HUP "$(head -n 1 "$T/pg/data/postmaster.pid")" || return 1
	for ((i = 0; i < 100; i++)); do
		grep -q "parameter \"ssl_ecdh_curve\" changed to \"$1\"" "$T/postgres.log" && return 0
		sleep 0.05
	done
	echo "the server did not reload ssl_ecdh_curve = $1" >&2
	return 1
}

for k in $IT_KEYS; do
	ref_make "$k" || tap_bail "p11agentctl ref $k failed"
	for proto in tls1_3 tls1_2; do
		if [ "$k" = p384 ] && [ "$proto" = tls1_2 ]; then
			pg_curve secp384r1 || tap_bail "cannot switch ssl_ecdh_curve"
			tap_case "$k $(proto_name "$proto") psql sslkey=reference file (server ssl_ecdh_curve secp384r1)" \
				psql_case "$proto" "$k" "$T/certs/$k.pem" "$T/refs/$k.pem"
			pg_curve prime256v1 || tap_bail "cannot switch ssl_ecdh_curve back"
			continue
		fi
		tap_case "$k $(proto_name "$proto") psql sslkey=reference file" \
			psql_case "$proto" "$k" "$T/certs/$k.pem" "$T/refs/$k.pem"
	done
done

# Negative control: a reference to another key than the certificate's is
# refused by libpq before the handshake: SSL_use_PrivateKey_file checks
# that key and certificate match ("key values mismatch").
mismatch() {
	local out rc=0
	out=$(query tls1_3 "$T/certs/p256.pem" "$T/refs/p384.pem" 2>&1) || rc=$?
	echo "$out"
	[ "$rc" -ne 0 ] || { echo "psql connected with p384's key for p256's certificate" >&2; return 1; }
	grep -q 'could not load private key file.*key values mismatch' <<<"$out"
}
tap_case "negative control: p384 reference with p256 certificate is refused" mismatch

stop_pid "$PG_PID" || true
tap_done
