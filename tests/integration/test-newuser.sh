#!/bin/bash
# Rough edges a new user hits (issue 10), each with a real program:
# - Python's ssl sees OpenSSL errors, not an errno the provider left behind
#   (FileNotFoundError with the agent down, BlockingIOError for a key that
#   does not match its certificate).
. "$(dirname "$0")/lib-prog.sh"

PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3
prog_require "$PY"
prog_setup
ref_make p256 || tap_bail "p11agentctl ref p256 failed"
ref_make p384 || tap_bail "p11agentctl ref p384 failed"

# py_load CERT KEY: prints the exception class load_cert_chain raised
# (or "loaded"), and its text on stderr.
py_load() {
	with_timeout "$IT_TIMEOUT" "${PROG_ENV[@]}" "$PY" - "$1" "$2" <<'PY'
import ssl, sys
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
try:
    ctx.load_cert_chain(sys.argv[1], sys.argv[2])
    print("loaded")
except Exception as e:
    print(type(e).__name__)
    print(f"{type(e).__name__}: {e}", file=sys.stderr)
PY
}

mismatch_is_ssl_error() {
	local got
	got=$(py_load "$T/certs/p384.pem" "$T/refs/p256.pem") || return 1
	echo "raised: $got"
	[ "$got" = SSLError ]
}
tap_case "python: a P-256 key with a P-384 certificate raises ssl.SSLError (not BlockingIOError)" \
	mismatch_is_ssl_error

matching_loads() {
	local got
	got=$(py_load "$T/certs/p256.pem" "$T/refs/p256.pem") || return 1
	echo "got: $got"
	[ "$got" = loaded ]
}
tap_case "python: the matching pair loads (control)" matching_loads

agent_down_is_ssl_error() {
	local got
	agent_stop || { echo "agent exit status $?" >&2; return 1; }
	got=$(py_load "$T/certs/p256.pem" "$T/refs/p256.pem")
	echo "raised: $got"
	agent_start || return 1
	[ "$got" = SSLError ]
}
tap_case "python: with the agent down, load_cert_chain raises ssl.SSLError (not FileNotFoundError)" \
	agent_down_is_ssl_error

agent_alive_and_clean() {
	kill -0 "$AGENT_PID" || { echo "agent died" >&2; return 1; }
	agent_stop || { echo "agent exit status $?" >&2; return 1; }
	! grep -E "Sanitizer|runtime error" "$T/agent.log"
}
tap_case "agent alive, exits 0, no sanitizer report" agent_alive_and_clean
tap_done
