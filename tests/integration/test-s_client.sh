#!/bin/bash
# openssl s_client with a token key given as a key-reference file (the
# URI form is test-handshake.sh), against openssl s_server -www -Verify 1
# -verify_return_error.
. "$(dirname "$0")/lib-prog.sh"

prog_setup

# get DIR PORT CERT KEY: s_client's view of the server page in DIR/page.
get() {
	local dir=$1 port=$2 cert=$3 key=$4 rc=0
	printf 'GET / HTTP/1.0\r\n\r\n' |
		client s_client -connect "127.0.0.1:$port" -servername localhost \
			-CAfile "$T/ca.pem" -verify_return_error -cert "$cert" -key "$key" \
			-brief -ign_eof >"$dir/client.out" 2>"$dir/client.err" || rc=$?
	sed -n '/^HTTP\/1.0 200 ok/,$p' "$dir/client.out" >"$dir/page"
	cat "$dir/client.err" >&2
	return "$rc"
}

for k in $IT_KEYS; do
	ref_make "$k" || tap_bail "p11agentctl ref $k failed"
	for proto in tls1_3 tls1_2; do
		tap_case "$k $(proto_name "$proto") s_client -key reference file" \
			client_case "$proto" "$k" get "$T/certs/$k.pem" "$T/refs/$k.pem"
	done
done

tap_done
