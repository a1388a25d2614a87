#!/bin/bash
# nginx under a bounded mTLS load (issue 5): 4 worker processes, the server
# key on the token given as a key-reference file, ssl_verify_client on.
# tlsload.py makes N full handshakes from 4 threads with a software client
# key; every handshake must succeed and the agent must have signed exactly
# once per handshake (the server's CertificateVerify / ServerKeyExchange).
# Fewer handshakes in the ASan build (P11AGENT_NGINX_HANDSHAKES overrides).
. "$(dirname "$0")/lib-prog.sh"

prog_require nginx python3
prog_setup
srv_certs || tap_bail "cannot issue server certificates"
NGINX_WORKERS=4
if [ -n "$IT_PRELOAD" ]; then
	N=${P11AGENT_NGINX_HANDSHAKES:-150}
else
	N=${P11AGENT_NGINX_HANDSHAKES:-1000}
fi

NGINX_CONNECTIONS=256
NGINX_ACCESS_LOG=off

# tls_load PROTO N: N handshakes from 4 threads; output in $T/tlsload-PROTO.out
tls_load() {
	with_timeout $((IT_TIMEOUT * 4)) env OPENSSL_CONF=/dev/null python3 \
		"$IT_LIB_DIR/tlsload.py" "$NGINX_PORT" "$T/ca.pem" "$T/soft/p256.pem" \
		"$T/soft/p256.key" "$2" 4 "$1" >"$T/tlsload-$1.out" 2>&1
}

tlf() { grep '^tlsload: ok=' "$1" | tr ' ' '\n' | sed -n "s#^$2=\([0-9.]*\).*#\1#p"; }

# loaded PROTO N KEY: nginx holding token key KEY under N handshakes.
loaded() {
	local proto=$1 n=$2 k=$3 out=$T/tlsload-$1.out before after rc=0 ok failed
	ref_make "$k" || return 1
	nginx_start "$T/srv/$k.pem" "$T/refs/$k.pem" || return 1
	before=$(agent_signatures) || return 1
	tls_load "$proto" "$n" || rc=1
	after=$(agent_signatures) || rc=1
	nginx_stop || rc=1
	cat "$out"
	ok=$(tlf "$out" ok) failed=$(tlf "$out" failed)
	NGINX_SUMMARY="$proto $k: $(grep '^tlsload: ok=' "$out"), agent signed $((after - before))"
	echo "$NGINX_SUMMARY"
	[ -n "$ok" ] || { echo "no summary from tlsload.py" >&2; return 1; }
	[ "$rc" -eq 0 ] && [ "$failed" -eq 0 ] && [ "$ok" -eq "$n" ] ||
		{ echo "failed handshakes (or nginx trouble):" >&2; cat "$T/nginx/error.log" >&2; return 1; }
	[ $((after - before)) -eq "$ok" ] ||
		{ echo "agent signed $((after - before)) times for $ok handshakes" >&2; return 1; }
	[ "$(tlf "$out" workers)" -ge 2 ] ||
		{ echo "only one worker answered (reuseport should spread)" >&2; return 1; }
}

NGINX_SUMMARY="?"
tap_case "nginx, $NGINX_WORKERS workers, p256 reference file: $N TLS 1.3 mTLS handshakes, none failed, agent signed each" \
	loaded tls1_3 "$N" p256
echo "# nginx: $NGINX_SUMMARY"
NGINX_SUMMARY="?"
tap_case "nginx, $NGINX_WORKERS workers, rsa2048 reference file: $((N / 3)) TLS 1.2 mTLS handshakes, none failed, agent signed each" \
	loaded tls1_2 $((N / 3)) rsa2048
echo "# nginx: $NGINX_SUMMARY"
tap_case "agent exits with status 0 on SIGTERM" agent_stop
tap_done
