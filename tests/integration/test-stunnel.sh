#!/bin/bash
# stunnel4 with a token key given as a key-reference file (`key = REF`),
# OPENSSL_CONF loading the provider:
#  - client mode: a plain HTTP request through stunnel to openssl s_server
#    -www -Verify 1 -verify_return_error, whose page shows the client
#    certificate it accepted;
#  - server mode: stunnel requires and verifies a client certificate
#    (verifyChain, requireCert) and hands the connection to a shell that
#    prints the client DN stunnel saw; openssl s_client with a software key
#    checks the server's certificate (test CA, the token key's).
. "$(dirname "$0")/lib-prog.sh"

prog_require stunnel4 curl
prog_setup
srv_certs || tap_bail "cannot issue server certificates"
[ -z "$IT_PRELOAD" ] || echo "# ASan build: stunnel4 runs with libasan preloaded, leak checking off"

# stunnel_start NAME CONF: run stunnel4 on CONF (foreground), wait until
# PORT (in STUNNEL_PORT) listens. Sets STUNNEL_PID.
stunnel_start() {
	local name=$1 conf=$2
	bg "$name" "${PROG_ENV[@]}" stunnel4 "$conf"
	STUNNEL_PID=$BG_PID
	wait_listen "$STUNNEL_PORT" "$STUNNEL_PID" || { cat "$T/$name.log" >&2; return 1; }
}

# tls_opts PROTO: stunnel's options for exactly one protocol version.
tls_opts() {
	local v
	v=$(proto_name "$1")
	printf 'sslVersionMin = %s\nsslVersionMax = %s\n' "$v" "$v"
}

# via_client DIR PORT CERT KEY PROTO: stunnel in client mode on a free port
# towards the s_server on PORT; curl speaks plain HTTP to stunnel.
via_client() {
	local dir=$1 port=$2 cert=$3 key=$4 proto=$5 rc=0
	STUNNEL_PORT=$(free_port)
	cat >"$dir/stunnel.conf" <<EOC
foreground = yes
pid =
debug = info
[tls]
client = yes
accept = 127.0.0.1:$STUNNEL_PORT
connect = 127.0.0.1:$port
cert = $cert
key = $key
CAfile = $T/ca.pem
verifyChain = yes
checkHost = localhost
$(tls_opts "$proto")
EOC
	stunnel_start "stunnel-client-$(basename "$dir")" "$dir/stunnel.conf" || return 1
	with_timeout "$IT_TIMEOUT" curl -sS -i --http1.0 "http://127.0.0.1:$STUNNEL_PORT/" \
		-o "$dir/page" || rc=$?
	stop_pid "$STUNNEL_PID" || true
	if [ "$rc" -ne 0 ] || ! grep -q '^HTTP/1.0 200 ok' "$dir/page"; then
		echo "stunnel log:" >&2
		cat "$T/stunnel-client-$(basename "$dir").log" >&2
	fi
	return "$rc"
}

tap_case "harness: client mode, software p256 key, TLS 1.3" \
	client_case tls1_3 soft-p256 via_client "$T/soft/p256.pem" "$T/soft/p256.key" tls1_3

for k in $IT_KEYS; do
	ref_make "$k" || tap_bail "p11agentctl ref $k failed"
	for proto in tls1_3 tls1_2; do
		tap_case "$k $(proto_name "$proto") stunnel client, key = reference file" \
			client_case "$proto" "$k" via_client "$T/certs/$k.pem" "$T/refs/$k.pem" "$proto"
	done
done

# as_server PROTO KEY CERT KEYFILE: stunnel in server mode with CERT and
# KEYFILE; the connection runs a shell printing stunnel's SSL_CLIENT_DN.
as_server() {
	local proto=$1 k=$2 cert=$3 key=$4 dir name
	name=stunnel-server-$k-$proto
	dir=$T/$name
	mkdir -p "$dir"
	sig_mark || return 1
	STUNNEL_PORT=$(free_port)
	# stunnel splits execArgs at blanks, without quoting: a script. It
	# reads the client's line first (unread data would reset the socket).
	# shellcheck disable=SC2016 # expanded by that script
	printf '#!/bin/sh\nread -r line\necho "stunnel-exec $line client-dn=$SSL_CLIENT_DN"\n' >"$dir/echo-dn"
	chmod 0755 "$dir/echo-dn"
	cat >"$dir/stunnel.conf" <<EOC
foreground = yes
pid =
debug = info
[tls]
accept = 127.0.0.1:$STUNNEL_PORT
cert = $cert
key = $key
CAfile = $T/ca.pem
verifyChain = yes
requireCert = yes
$(tls_opts "$proto")
exec = $dir/echo-dn
EOC
	stunnel_start "$name" "$dir/stunnel.conf" || return 1
	soft_get "$dir" "$STUNNEL_PORT" "$proto" "$k" 'hello\n' || { cat "$T/$name.log" >&2; return 1; }
	stop_pid "$STUNNEL_PID" || true
	if ! grep -Eq '^stunnel-exec hello client-dn=.*CN ?= ?soft-p256' "$dir/reply"; then
		echo "stunnel did not pass on the verified client certificate; reply:" >&2
		cat "$dir/reply" "$T/$name.log" >&2
		return 1
	fi
	[ "$k" = localhost ] || sig_signed
}

tap_case "harness: server mode, software server key, TLS 1.3" \
	as_server tls1_3 localhost "$T/server.pem" "$T/server.key"

for k in $IT_KEYS; do
	for proto in tls1_3 tls1_2; do
		tap_case "$k $(proto_name "$proto") stunnel server, key = reference file" \
			as_server "$proto" "$k" "$T/srv/$k.pem" "$T/refs/$k.pem"
	done
done

tap_done
