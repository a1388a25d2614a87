#!/bin/bash
# openssl s_server holding a token key, given as a pkcs11: URI and as a
# key-reference file: a client with a software key (default provider only)
# verifies the server's certificate against the test CA and sees the token
# key's certificate; the server requires and verifies the client's
# certificate; the agent signed (ServerKeyExchange in TLS 1.2,
# CertificateVerify in TLS 1.3).
. "$(dirname "$0")/lib-prog.sh"

prog_setup
srv_certs || tap_bail "cannot issue server certificates"

# srv KEYARG CERT PROTO KEY: s_server with the provider, one connection,
# -www; the client checks it; the page shows the client certificate.
srv() {
	local keyarg=$1 cert=$2 proto=$3 k=$4 dir port
	dir=$T/s_server-$k-$proto-$RANDOM
	mkdir -p "$dir"
	sig_mark || return 1
	port=$(free_port)
	bg "s_server-$k-$proto" "${PROG_ENV[@]}" openssl s_server \
		-accept "127.0.0.1:$port" -naccept 1 -www "-$proto" \
		-cert "$cert" -key "$keyarg" -CAfile "$T/ca.pem" -Verify 1 -verify_return_error
	wait_listen "$port" "$BG_PID" || { cat "$T/s_server-$k-$proto.log" >&2; return 1; }
	soft_get "$dir" "$port" "$proto" "$k" || { cat "$T/s_server-$k-$proto.log" >&2; return 1; }
	stop_pid "$BG_PID" || true
	if ! grep -q '^Client certificate' "$dir/reply" ||
		! grep -q 'Verify return code: 0 (ok)' "$dir/reply"; then
		echo "server page shows no verified client certificate:" >&2
		cat "$dir/reply" >&2
		return 1
	fi
	[ "$k" = localhost ] || sig_signed
}

tap_case "harness: software server key, TLS 1.3" \
	srv "$T/server.key" "$T/server.pem" tls1_3 localhost

for k in $IT_KEYS; do
	for proto in tls1_3 tls1_2; do
		tap_case "$k $(proto_name "$proto") s_server -key pkcs11: URI" \
			srv "$(uri "$k")" "$T/srv/$k.pem" "$proto" "$k"
	done
done

srv_ref() {
	ref_make "$2" || return 1
	srv "$T/refs/$2.pem" "$T/srv/$2.pem" "$1" "$2"
}
for k in $IT_KEYS; do
	for proto in tls1_3 tls1_2; do
		tap_case "$k $(proto_name "$proto") s_server -key reference file" srv_ref "$proto" "$k"
	done
done

tap_done
