#!/bin/bash
# Python 3's ssl module with a token key given as a key-reference file:
# SSLContext.load_cert_chain(CERT, REF) (SSL_CTX_use_PrivateKey_file, then
# SSL_CTX_check_private_key), OPENSSL_CONF loading the provider, against
# openssl s_server -www -Verify 1 -verify_return_error.
. "$(dirname "$0")/lib-prog.sh"

# Debian's own python3 (the real program on Debian 12), not an
# interpreter of another origin earlier in PATH
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3
prog_require "$PY"
prog_setup
[ -z "$IT_PRELOAD" ] || echo "# ASan build: python3 runs with libasan preloaded, leak checking off"

# get DIR PORT CERT KEY: Python's view of the server page in DIR/page.
get() {
	local dir=$1 port=$2
	shift 2
	with_timeout "$IT_TIMEOUT" "${PROG_ENV[@]}" "$PY" - "$port" "$T/ca.pem" "$@" \
		>"$dir/page" <<'PY'
import socket, ssl, sys
port, ca, cert, key = sys.argv[1:5]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.load_verify_locations(ca)
ctx.load_cert_chain(cert, key)
data = b""
with socket.create_connection(("127.0.0.1", int(port)), timeout=20) as raw:
    with ctx.wrap_socket(raw, server_hostname="localhost") as s:
        print(f"python: {s.version()}", file=sys.stderr)
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        try:
            while chunk := s.recv(65536):
                data += chunk
        except ssl.SSLEOFError:
            pass  # s_server -www may close without close_notify
sys.stdout.write(data.decode("latin-1"))
PY
}

tap_case "harness: software p256 key, TLS 1.3" \
	client_case tls1_3 soft-p256 get "$T/soft/p256.pem" "$T/soft/p256.key"

for k in $IT_KEYS; do
	ref_make "$k" || tap_bail "p11agentctl ref $k failed"
	for proto in tls1_3 tls1_2; do
		tap_case "$k $(proto_name "$proto") python ssl load_cert_chain(cert, reference file)" \
			client_case "$proto" "$k" get "$T/certs/$k.pem" "$T/refs/$k.pem"
	done
done

tap_done
