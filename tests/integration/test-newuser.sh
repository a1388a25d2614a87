#!/bin/bash
# Rough edges a new user hits (issue 10), each with a real program:
# - a URI that matches several keys is refused where one key is needed,
#   naming the matches (as p11agentctl ref and key-reference files do)
# - openssl pkey -in URI -text / -out FILE print the public parts and write
#   a key-reference file instead of failing with an empty file
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

ambiguous_uri_refused() {
	local rc=0 u="pkcs11:token=$P11AGENT_TEST_TOKEN;type=private"
	head -c 32 /dev/urandom >"$T/amb.dgst"
	client pkeyutl -sign -inkey "$u" -in "$T/amb.dgst" -out "$T/amb.sig" 2>"$T/amb.err" || rc=$?
	cat "$T/amb.err"
	[ "$rc" -ne 0 ] || { echo "signed with an ambiguous URI" >&2; return 1; }
	[ ! -s "$T/amb.sig" ] || { echo "a signature was written" >&2; return 1; }
	grep -q "matches 4 keys" "$T/amb.err" && grep -q "object=p256" "$T/amb.err" &&
		grep -q "name one" "$T/amb.err" || return 1
	# listing every match stays possible
	client storeutl -noout -text "$u" >"$T/amb.list" 2>&1 || { cat "$T/amb.list"; return 1; }
	[ "$(grep -c '^[0-9]*: Pkey$' "$T/amb.list")" -eq 4 ] || { cat "$T/amb.list"; return 1; }
}
tap_case "a URI matching 4 keys is refused for signing, naming them; storeutl still lists all 4" \
	ambiguous_uri_refused

pkey_text_and_out() {
	local u canon
	u=$(uri p256)
	canon=$("$P11AGENTCTL" --socket "$SOCK" keys "$u" | head -n 1)
	client pkey -in "$u" -text -noout >"$T/pkey.txt" 2>&1 || { cat "$T/pkey.txt"; return 1; }
	cat "$T/pkey.txt"
	grep -q "^Public-Key: (256 bit)" "$T/pkey.txt" && grep -q "NIST CURVE: P-256" "$T/pkey.txt" &&
		grep -qF "URI: $canon" "$T/pkey.txt" || return 1
	rm -f "$T/p256.out.pem"
	client pkey -in "$u" -out "$T/p256.out.pem" || return 1
	grep -q "BEGIN P11AGENT KEY REFERENCE" "$T/p256.out.pem" || { cat "$T/p256.out.pem"; return 1; }
	# the file written is a key reference: it signs, through the agent
	head -c 32 /dev/urandom >"$T/po.dgst"
	client pkeyutl -sign -inkey "$T/p256.out.pem" -in "$T/po.dgst" -out "$T/po.sig" &&
		plain pkeyutl -verify -pubin -inkey "$T/p256.pub" -in "$T/po.dgst" -sigfile "$T/po.sig"
}
plain x509 -in "$T/certs/p256.pem" -pubkey -noout -out "$T/p256.pub" || tap_bail "no public key"
tap_case "openssl pkey -in URI -text prints the public key and the URI; -out writes a key reference that signs" \
	pkey_text_and_out

tap_done
