#!/bin/bash
# haproxy with a token key: `bind ... ssl crt COMBINED ca-file CA verify
# required`, where COMBINED is the server certificate followed by the
# key-reference file (haproxy reads the certificate and the key from one
# PEM file), nbthread 2, OPENSSL_CONF loading the provider. A client with a
# software key (openssl s_client, default provider only) checks the server
# certificate (test CA, CN of the token key) and haproxy's view of the
# client (ssl_c_verify, ssl_c_s_dn(cn), ssl_fc_protocol) in its reply.
. "$(dirname "$0")/lib-prog.sh"

prog_require haproxy
prog_setup
srv_certs || tap_bail "cannot issue server certificates"
[ -z "$IT_PRELOAD" ] || echo "# ASan build: haproxy runs with libasan preloaded, leak checking off"

# haproxy_start COMBINED: haproxy in the foreground (-db) on a free port
# (HAPROXY_PORT). Sets HAPROXY_PID.
haproxy_start() {
	local crt=$1 d=$T/haproxy try
	mkdir -p "$d"
	for ((try = 0; try < 3; try++)); do
		HAPROXY_PORT=$(free_port)
		cat >"$d/haproxy.cfg" <<EOC
global
	nbthread 2
	log stderr format raw local0 info
defaults
	mode http
	log global
	option httplog
	timeout connect 5s
	timeout client 20s
	timeout server 20s
frontend tls
	bind 127.0.0.1:$HAPROXY_PORT ssl crt $crt ca-file $T/ca.pem verify required ssl-min-ver TLSv1.2 ssl-max-ver TLSv1.3
	http-request return status 200 content-type text/plain lf-string "haproxy verify=%[ssl_c_verify] cn=%[ssl_c_s_dn(cn)] proto=%[ssl_fc_protocol] thread=%[thread]\n"
EOC
		bg haproxy "${PROG_ENV[@]}" haproxy -db -f "$d/haproxy.cfg"
		HAPROXY_PID=$BG_PID
		wait_listen "$HAPROXY_PORT" "$HAPROXY_PID" && return 0
		grep -qi 'in use' "$T/haproxy.log" || break
	done
	echo "haproxy did not start:" >&2
	cat "$T/haproxy.log" >&2
	return 1
}

# get DIR PROTO KEY: haproxy's reply must show a verified client
# certificate (ssl_c_verify 0) and PROTO.
get() {
	local dir=$1 proto=$2 k=$3
	soft_get "$dir" "$HAPROXY_PORT" "$proto" "$k" || return 1
	if ! grep -q "^haproxy verify=0 cn=soft-p256 proto=$(proto_name "$proto") thread=" "$dir/reply"; then
		echo "haproxy did not accept the client certificate with $(proto_name "$proto"); reply:" >&2
		cat "$dir/reply" >&2
		return 1
	fi
	grep '^haproxy ' "$dir/reply"
}

# haproxy_case PROTO KEY CERT KEYFILE: COMBINED = CERT + KEYFILE.
haproxy_case() {
	local proto=$1 k=$2 cert=$3 key=$4 crt rc=0
	crt=$T/haproxy-$k.pem
	cat "$cert" "$key" >"$crt"
	chmod 0600 "$crt"
	sig_mark || return 1
	haproxy_start "$crt" || return 1
	get "$T/haproxy-$k-$proto" "$proto" "$k" || rc=1
	stop_pid "$HAPROXY_PID" || true
	[ "$rc" -eq 0 ] || { cat "$T/haproxy.log" >&2; return 1; }
	[ "$k" = localhost ] || sig_signed
}

tap_case "harness: software server key, TLS 1.3" \
	haproxy_case tls1_3 localhost "$T/server.pem" "$T/server.key"

for k in $IT_KEYS; do
	ref_make "$k" || tap_bail "p11agentctl ref $k failed"
	for proto in tls1_3 tls1_2; do
		tap_case "$k $(proto_name "$proto") haproxy crt = certificate + reference file" \
			haproxy_case "$proto" "$k" "$T/srv/$k.pem" "$T/refs/$k.pem"
	done
done

# Handshakes on one haproxy with two threads: each one signed by the agent,
# and both threads among those that answered (haproxy's %[thread]), so the
# provider's key object is really used from two threads. Up to 16
# connections until both threads were seen.
threads() {
	local k=p256 i n=0 rc=0 crt=$T/haproxy-p256.pem seen
	cat "$T/srv/$k.pem" "$T/refs/$k.pem" >"$crt"
	sig_mark || return 1
	haproxy_start "$crt" || return 1
	for ((i = 1; i <= 16; i++)); do
		get "$T/haproxy-threads-$i" tls1_3 "$k" || { rc=1; break; }
		n=$i
		seen=$(cat "$T"/haproxy-threads-*/reply | sed -n 's/^haproxy .* thread=\([0-9]*\)$/\1/p' |
			sort -u | wc -l)
		[ "$i" -lt 6 ] || [ "$seen" -lt 2 ] || break
	done
	stop_pid "$HAPROXY_PID" || true
	[ "$rc" -eq 0 ] || { cat "$T/haproxy.log" >&2; return 1; }
	echo "$n handshakes, answered by $seen haproxy threads"
	[ "$seen" -ge 2 ] || { echo "all $n handshakes ran on one haproxy thread (nbthread 2?)" >&2; return 1; }
	sig_signed "$n"
}
tap_case "p256 TLS 1.3: handshakes on nbthread 2, both threads used, each signed by the agent" threads

tap_done
