#!/bin/bash
# nginx with a token key given as a key-reference file
# (ssl_certificate_key REF), several worker processes, ssl_verify_client
# on. The master loads the key (OPENSSL_CONF is set before it starts; no
# `env` directive: the workers' environment is scrubbed) and the workers,
# forked from it, sign through the agent. A client with a software key
# (openssl s_client, default provider only) checks the server certificate
# (test CA, CN of the token key) and nginx's own view of the client
# ($ssl_client_verify, $ssl_client_s_dn, $ssl_protocol); $pid names the
# worker that answered. nginx runs as this test's user (`user` directive:
# the agent admits only its owner's uid), with every path in the temp dir.
. "$(dirname "$0")/lib-prog.sh"

prog_require nginx
prog_setup
srv_certs || tap_bail "cannot issue server certificates"
[ -z "$IT_PRELOAD" ] || echo "# ASan build: nginx runs with libasan preloaded, leak checking off"
NGINX_WORKERS=3

# get DIR PROTO KEY: one request with a software client key; nginx's reply
# must show a verified client certificate and PROTO. Prints the worker pid.
get() {
	local dir=$1 proto=$2 k=$3 line
	soft_get "$dir" "$NGINX_PORT" "$proto" "$k" || return 1
	line=$(grep '^nginx ' "$dir/reply")
	if ! [[ $line =~ verify=SUCCESS\ dn=CN=soft-p256,O=p11agent\ tests\ proto=$(proto_name "$proto")\ worker=([0-9]+) ]]; then
		echo "nginx did not accept the client certificate with $(proto_name "$proto"); reply:" >&2
		cat "$dir/reply" >&2
		return 1
	fi
	echo "${BASH_REMATCH[1]}"
}

# nginx_case PROTO KEY CERT KEYFILE
nginx_case() {
	local proto=$1 k=$2 cert=$3 key=$4 w rc=0
	sig_mark || return 1
	nginx_start "$cert" "$key" || return 1
	w=$(get "$T/nginx-$k-$proto" "$proto" "$k") || rc=1
	nginx_stop || rc=1
	[ "$rc" -eq 0 ] || { cat "$T/nginx/error.log" >&2; return 1; }
	echo "answered by worker $w (master $(cat "$T/nginx/nginx.pid" 2>/dev/null))"
	[ "$k" = localhost ] || sig_signed
}

tap_case "harness: software server key, TLS 1.3" \
	nginx_case tls1_3 localhost "$T/server.pem" "$T/server.key"

for k in $IT_KEYS; do
	ref_make "$k" || tap_bail "p11agentctl ref $k failed"
	for proto in tls1_3 tls1_2; do
		tap_case "$k $(proto_name "$proto") nginx ssl_certificate_key reference file" \
			nginx_case "$proto" "$k" "$T/srv/$k.pem" "$T/refs/$k.pem"
	done
done

# Several handshakes on one nginx: at least two different workers answer
# (reuseport; all 8 on one of 3 workers has odds of 1 in 2187), each
# signature through the agent.
spread() {
	local k=p256 i w rc=0 workers=()
	sig_mark || return 1
	nginx_start "$T/srv/$k.pem" "$T/refs/$k.pem" || return 1
	for i in 1 2 3 4 5 6 7 8; do
		w=$(get "$T/nginx-spread-$i" tls1_3 "$k") || { rc=1; break; }
		workers+=("$w")
	done
	nginx_stop || rc=1
	[ "$rc" -eq 0 ] || { cat "$T/nginx/error.log" >&2; return 1; }
	echo "workers that answered: ${workers[*]}"
	if [ "$(printf '%s\n' "${workers[@]}" | sort -u | wc -l)" -lt 2 ]; then
		echo "all handshakes went to one worker" >&2
		return 1
	fi
	sig_signed 8
}
tap_case "p256 TLS 1.3: 8 handshakes over $NGINX_WORKERS workers, each signed by the agent" spread

tap_done
