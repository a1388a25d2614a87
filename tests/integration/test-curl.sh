#!/bin/bash
# curl (OpenSSL backend) with a token key given as a key-reference file:
# `curl --cert CERT --key REF`, OPENSSL_CONF loading the provider, against
# openssl s_server -www -Verify 1 -verify_return_error. curl loads the key
# with SSL_CTX_use_PrivateKey_file (PEM) and checks it against the
# certificate (SSL_CTX_check_private_key).
. "$(dirname "$0")/lib-prog.sh"

prog_require curl
prog_setup
prog_unsanitized curl

# get DIR PORT CERT KEY: curl's view of the server page in DIR/page.
get() {
	local dir=$1 port=$2 cert=$3 key=$4
	with_timeout "$IT_TIMEOUT" "${PROG_ENV[@]}" curl -sS -i --http1.0 \
		--cacert "$T/ca.pem" --cert "$cert" --key "$key" \
		"https://127.0.0.1:$port/" -o "$dir/page" 2>"$dir/curl.err"
	local rc=$?
	cat "$dir/curl.err" >&2
	return "$rc"
}

tap_case "harness: software p256 key, TLS 1.3" \
	client_case tls1_3 soft-p256 get "$T/soft/p256.pem" "$T/soft/p256.key"

for k in $IT_KEYS; do
	ref_make "$k" || tap_bail "p11agentctl ref $k failed"
	for proto in tls1_3 tls1_2; do
		tap_case "$k $(proto_name "$proto") curl --key reference file" \
			client_case "$proto" "$k" get "$T/certs/$k.pem" "$T/refs/$k.pem"
	done
done

tap_done
