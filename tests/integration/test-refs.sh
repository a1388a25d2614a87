#!/bin/bash
# Key-reference files: programs that only take a key FILE. `p11agentctl ref`
# writes them; p11agent.so's decoders turn them into token keys for
# `openssl pkey/pkeyutl/s_client` (OSSL_STORE's file: loader) and for
# PEM_read_bio_PrivateKey / SSL_CTX_use_PrivateKey_file (Python's ssl).
# Every signature is checked with the certificate's public key by the
# default provider alone, and the agent's signature counter must move.
. "$(dirname "$0")/lib.sh"

it_setup
agent_start || tap_bail "p11agentd did not start"

head -c 1000 /dev/urandom >"$T/msg"
plain dgst -sha256 -binary -out "$T/msg.sha256" "$T/msg" || tap_bail "openssl dgst"
for k in $IT_KEYS; do
	plain x509 -in "$T/certs/$k.pem" -pubkey -noout -out "$T/$k.pub" ||
		tap_bail "cannot read the public key of certs/$k.pem"
done

ctl() { with_timeout 20 "$P11AGENTCTL" --socket "$SOCK" "$@"; }
mkref() { python3 "$IT_LIB_DIR/mkref.py" "$@"; }

# py ARGS...: python3 as a provider client (bounded). Under ASan, without
# leak checking: Python itself does not free everything at exit.
py() {
	local e=(OPENSSL_CONF="${IT_CNF:-$CNF}")
	[ -z "$IT_PRELOAD" ] ||
		e+=(LD_PRELOAD="$IT_PRELOAD" ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0")
	with_timeout "$IT_TIMEOUT" env "${e[@]}" python3 "$@"
}

# failed_cleanly STATUS: an ordinary failure (not 0, a timeout or a signal).
failed_cleanly() {
	case $1 in
	0) echo "the command succeeded; it should have failed" >&2 ;;
	124 | 137) echo "the command hung (killed by timeout)" >&2 ;;
	*) [ "$1" -lt 128 ] && return 0
	   echo "the command died by signal $(($1 - 128))" >&2 ;;
	esac
	return 1
}

# signed_by_agent BEFORE: the counter is now above BEFORE.
signed_by_agent() {
	local after
	after=$(agent_signatures) || return 1
	if [ "$after" -le "$1" ]; then
		echo "agent signature counter $1 -> $after: no signature went through the agent" >&2
		return 1
	fi
	echo "signatures: $1 -> $after"
}

# --- p11agentctl ref / cert ---------------------------------------------
ctl_ref() {
	local k=$1 f=$T/$1.ref mode
	rm -f "$f"
	ctl ref "$(uri "$k")" -o "$f" || return 1
	mode=$(stat -c %a "$f")
	[ "$mode" = 600 ] || { echo "$f has mode $mode, not 600" >&2; return 1; }
	grep -q '^-----BEGIN P11AGENT KEY REFERENCE-----$' "$f" ||
		{ echo "no P11AGENT KEY REFERENCE block:" >&2; cat "$f" >&2; return 1; }
	# the DER carries the canonical URI (with the token's serial) and the type
	openssl asn1parse -in "$f" >"$f.asn1" || return 1
	cat "$f.asn1"
	grep -q 'INTEGER *:01$' "$f.asn1" || { echo "no version 1" >&2; return 1; }
	grep -q "UTF8STRING *:pkcs11:.*serial=.*object=$k;type=private" "$f.asn1" ||
		{ echo "no canonical URI" >&2; return 1; }
	! grep -qi 'pin-' "$f" "$f.asn1" || { echo "a PIN attribute in the file" >&2; return 1; }
}
for k in $IT_KEYS; do
	tap_case "p11agentctl ref $k: mode 0600, version 1, canonical URI" ctl_ref "$k"
done

ctl_refuses_overwrite() {
	local f=$T/p256.ref rc=0 before
	before=$(cat "$f") || return 1
	ctl ref "$(uri rsa2048)" -o "$f" 2>"$T/ow.err" || rc=$?
	cat "$T/ow.err"
	failed_cleanly "$rc" || return 1
	[ "$(cat "$f")" = "$before" ] || { echo "the file was changed" >&2; return 1; }
	grep -q 'exists' "$T/ow.err" || { echo "no 'exists' in the message" >&2; return 1; }
	# --force replaces it, still with mode 0600 (even from a 0644 file)
	chmod 0644 "$f"
	ctl ref "$(uri rsa2048)" -o "$f" --force || return 1
	[ "$(stat -c %a "$f")" = 600 ] || { echo "mode after --force: $(stat -c %a "$f")" >&2; return 1; }
	grep -q 'object=rsa2048' <(openssl asn1parse -in "$f") || return 1
	ctl ref "$(uri p256)" -o "$f" --force
}
tap_case "p11agentctl ref refuses to overwrite; --force replaces (mode 0600)" ctl_refuses_overwrite

ctl_ref_refuses() {
	local rc=0 what=$1 u=$2
	ctl ref "$u" -o "$T/refused.ref" 2>"$T/refused.err" || rc=$?
	cat "$T/refused.err"
	failed_cleanly "$rc" || return 1
	[ ! -e "$T/refused.ref" ] || { echo "a file was written" >&2; return 1; }
	grep -qi "$what" "$T/refused.err" || { echo "message does not say '$what'" >&2; return 1; }
}
tap_case "p11agentctl ref refuses a URI with pin-value" ctl_ref_refuses 'PIN' \
	"$(uri p256)?pin-value=1234"
tap_case "p11agentctl ref refuses a URI with pin-source" ctl_ref_refuses 'PIN' \
	"pkcs11:object=p256;type=private?pin-source=file:/etc/pin"
tap_case "p11agentctl ref refuses a URI matching several keys" ctl_ref_refuses 'matches 4 keys' \
	"pkcs11:token=$P11AGENT_TEST_TOKEN;type=private"
tap_case "p11agentctl ref refuses a URI matching no key" ctl_ref_refuses 'no key matches' \
	"pkcs11:token=$P11AGENT_TEST_TOKEN;object=nope;type=private"

ctl_cert() {
	ctl cert "$(uri p256)" -o "$T/p256.crt" || return 1
	cmp <(plain x509 -in "$T/p256.crt" -outform DER) <(plain x509 -in "$T/certs/p256.pem" -outform DER) ||
		{ echo "certificate differs from certs/p256.pem" >&2; return 1; }
}
tap_case "p11agentctl cert writes the token's certificate" ctl_cert

# --- using the files ------------------------------------------------------
pubout() { # pubout REF KEY: the public key from REF is the certificate's
	client pkey -in "$1" -pubout -out "$1.pub" || return 1
	cmp -s "$1.pub" "$T/$2.pub" || { echo "public key differs from certs/$2.pem" >&2; return 1; }
}
for k in $IT_KEYS; do
	tap_case "$k: pkey -in ref -pubout equals the certificate's key" pubout "$T/$k.ref" "$k"
done

pkeyutl_ref() { # pkeyutl_ref REF KEY
	local ref=$1 k=$2 before in=$T/msg.sha256 raw=() opts=()
	case $k in
	ed25519) in=$T/msg raw=(-rawin) ;;
	rsa*) opts=(-pkeyopt digest:sha256) ;;
	esac
	rm -f "$T/ref.sig"
	before=$(agent_signatures) || return 1
	client pkeyutl -sign -inkey "$ref" "${raw[@]}" "${opts[@]}" -in "$in" -out "$T/ref.sig" ||
		{ echo "pkeyutl -sign failed" >&2; return 1; }
	plain pkeyutl -verify -pubin -inkey "$T/$k.pub" "${raw[@]}" "${opts[@]}" -in "$in" \
		-sigfile "$T/ref.sig" || { echo "signature does not verify" >&2; return 1; }
	signed_by_agent "$before"
}
for k in $IT_KEYS; do
	tap_case "$k: pkeyutl -sign -inkey ref verifies" pkeyutl_ref "$T/$k.ref" "$k"
done

HS_N=0
hs_ref() { # hs_ref KEY PROTO KEYFILE CERTFILE
	local k=$1 proto=$2 before dir
	HS_N=$((HS_N + 1))
	dir=$T/hs$HS_N-$k-$proto-$(basename "$3")
	before=$(agent_signatures) || return 1
	mtls "$dir" "$3" "$4" "$proto" || echo "s_client exited with status $?" >&2
	mtls_accepted "$dir" "$k" "${proto/tls1_/TLSv1.}" "$(sigtype_of "$k")" || return 1
	signed_by_agent "$before"
}
for k in rsa2048 p256 ed25519; do
	for proto in tls1_3 tls1_2; do
		tap_case "$k TLS ${proto/tls1_/1.}: s_client -key ref accepted by s_server" \
			hs_ref "$k" "$proto" "$T/$k.ref" "$T/certs/$k.pem"
	done
done

# haproxy's crt file: the certificate, then the reference
for k in rsa2048 p256; do
	cat "$T/certs/$k.pem" "$T/$k.ref" >"$T/$k.combined.pem"
done
tap_case "combined cert+ref file: pkey -pubout" pubout "$T/p256.combined.pem" p256
tap_case "combined cert+ref file: rsa2048 TLS 1.3 (-cert and -key the same file)" \
	hs_ref rsa2048 tls1_3 "$T/rsa2048.combined.pem" "$T/rsa2048.combined.pem"

# pkcs11-provider's format (no key type: the agent tells)
mkref pkcs11-provider "$(uri p256)" >"$T/p256.pk11prov.pem"
mkref pkcs11-provider "$(uri rsa2048)" >"$T/rsa2048.pk11prov.pem"
tap_case "pkcs11-provider file: pkey -pubout (p256)" pubout "$T/p256.pk11prov.pem" p256
tap_case "pkcs11-provider file: pkeyutl -sign verifies (rsa2048)" \
	pkeyutl_ref "$T/rsa2048.pk11prov.pem" rsa2048
tap_case "pkcs11-provider file: p256 TLS 1.3 accepted" \
	hs_ref p256 tls1_3 "$T/p256.pk11prov.pem" "$T/certs/p256.pem"

# PEM_read_bio_PrivateKey through SSL_CTX_use_PrivateKey_file: Python's
# ssl.load_cert_chain (it also checks that key and certificate match), then
# a handshake the server accepts.
py_tls() { # py_tls KEY PROTO CERTFILE KEYFILE
	local k=$1 proto=$2 dir before
	dir=$T/py-$k-$proto-$(basename "$4")
	mkdir -p "$dir"
	before=$(agent_signatures) || return 1
	server_start "$dir" "-$proto" || return 1
	py - "$SRV_PORT" "$T/ca.pem" "$3" "$4" "${proto/tls1_/}" >"$dir/page" <<'PY' ||
import socket, ssl, sys
port, ca, cert, key, ver = sys.argv[1:]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.load_verify_locations(ca)
ctx.load_cert_chain(cert, key)
v = ssl.TLSVersion.TLSv1_3 if ver == "3" else ssl.TLSVersion.TLSv1_2
ctx.minimum_version = ctx.maximum_version = v
with socket.create_connection(("127.0.0.1", int(port))) as s:
    with ctx.wrap_socket(s, server_hostname="localhost") as t:
        t.sendall(b"GET / HTTP/1.0\r\n\r\n")
        out = b""
        while True:
            d = t.recv(65536)
            if not d:
                break
            out += d
sys.stdout.write(out.decode(errors="replace"))
PY
		{ echo "python client failed" >&2; stop_pid "$SRV_PID"; return 1; }
	stop_pid "$SRV_PID" || true
	mtls_accepted "$dir" "$k" "${proto/tls1_/TLSv1.}" "$(sigtype_of "$k")" || return 1
	signed_by_agent "$before"
}
tap_case "python ssl (SSL_CTX_use_PrivateKey_file): p256 ref TLS 1.3" \
	py_tls p256 tls1_3 "$T/certs/p256.pem" "$T/p256.ref"
tap_case "python ssl: rsa2048 combined cert+ref file TLS 1.2" \
	py_tls rsa2048 tls1_2 "$T/rsa2048.combined.pem" "$T/rsa2048.combined.pem"

# default_properties = ?provider=default keeps reference files working
pref_ref() {
	write_cnf "$T/pref.cnf" "alg_section = alg_sect
[alg_sect]
default_properties = ?provider=default"
	IT_CNF=$T/pref.cnf hs_ref p256 tls1_3 "$T/p256.ref" "$T/certs/p256.pem"
}
tap_case "p256 ref TLS 1.3 with default_properties = ?provider=default" pref_ref

# packaging/openssl-p11agent.cnf, as installed (only the module path is the
# build's): for one program through OPENSSL_CONF, and included system-wide
# as the README says, into a copy of this machine's /etc/ssl/openssl.cnf.
snippet() {
	[ -f "${P11AGENT_CNF_SNIPPET:-}" ] || { echo "no snippet: $P11AGENT_CNF_SNIPPET" >&2; return 1; }
	sed "s#^module = .*#module = $P11AGENT_SO#" "$P11AGENT_CNF_SNIPPET" >"$T/snippet.cnf"
	grep -q '^default_properties = ?provider=default$' "$T/snippet.cnf" ||
		{ echo "the snippet does not prefer the default provider" >&2; return 1; }
}
snippet_one_program() {
	snippet || return 1
	P11AGENT_SOCKET=$SOCK IT_CNF=$T/snippet.cnf client list -providers >"$T/snippet.list" || return 1
	cat "$T/snippet.list"
	grep -q '^  p11agent$' "$T/snippet.list" && grep -q '^  default$' "$T/snippet.list" ||
		{ echo "providers default and p11agent are not both active" >&2; return 1; }
	P11AGENT_SOCKET=$SOCK IT_CNF=$T/snippet.cnf hs_ref p256 tls1_3 "$T/p256.ref" "$T/certs/p256.pem"
}
tap_case "openssl-p11agent.cnf via OPENSSL_CONF: p256 ref TLS 1.3" snippet_one_program

snippet_system_wide() {
	snippet || return 1
	[ -f /etc/ssl/openssl.cnf ] || { echo "no /etc/ssl/openssl.cnf" >&2; return 1; }
	{
		echo ".include $T/snippet.cnf"
		sed '/^\[ *openssl_init *\]/a providers = p11agent_providers\nalg_section = p11agent_algorithms' \
			/etc/ssl/openssl.cnf
	} >"$T/system.cnf"
	grep -A2 '^\[ *openssl_init *\]' "$T/system.cnf"
	P11AGENT_SOCKET=$SOCK IT_CNF=$T/system.cnf hs_ref rsa2048 tls1_2 "$T/rsa2048.ref" \
		"$T/certs/rsa2048.pem"
}
tap_case "openssl-p11agent.cnf included system-wide: rsa2048 ref TLS 1.2" snippet_system_wide

# --- fork and threads (tests/integration/forksign.c) --------------------
# forksign_case KEY MODE N SIGNS: all signatures verify under the default
# provider, and the agent counted at least that many.
forksign_case() {
	local before min
	[ -x "${FORKSIGN:-}" ] || { echo "forksign not built: $FORKSIGN" >&2; return 1; }
	before=$(agent_signatures) || return 1
	with_timeout $((IT_TIMEOUT * 4)) env OPENSSL_CONF="$CNF" "$FORKSIGN" "$@" || return 1
	min=$(($3 * $4))
	[ "$2" = fork ] && min=$((($3 + 1) * $4 + 1))
	local after
	after=$(agent_signatures) || return 1
	if [ "$after" -lt $((before + min)) ]; then
		echo "agent signature counter $before -> $after, expected at least +$min" >&2
		return 1
	fi
	echo "signatures: $before -> $after"
}
tap_case "forksign: p256 ref, 4 children + parent x 50 signatures, all verified" \
	forksign_case "$T/p256.ref" fork 4 50
tap_case "forksign: rsa2048 URI, 3 children + parent x 20 signatures, all verified" \
	forksign_case "$(uri rsa2048)" fork 3 20
tap_case "forksign: p256 ref, 8 threads x 500 signatures on one key, all verified" \
	forksign_case "$T/p256.ref" threads 8 500
tap_case "forksign: ed25519 ref, 8 threads x 100 signatures, all verified" \
	forksign_case "$T/ed25519.ref" threads 8 100

# --- bad files: a clear error, never a crash or a hang -------------------
# bad_ref FILE PATTERN [URI]: pkey -in FILE fails cleanly, the error matches
# PATTERN (and names URI, if given). Then the agent still signs.
bad_ref() {
	local f=$1 pattern=$2 u=${3:-} rc=0
	client pkey -in "$f" -pubout -out "$f.pub" 2>"$f.err" || rc=$?
	cat "$f.err"
	failed_cleanly "$rc" || return 1
	if [ -n "$u" ]; then
		grep -qF "$u" "$f.err" || { echo "the error does not name $u" >&2; return 1; }
	fi
	grep -Eqi "$pattern" "$f.err" || { echo "the error does not match '$pattern'" >&2; return 1; }
	# the same through PEM_read_bio_PrivateKey (python)
	rc=0
	py -c 'import ssl, sys
c = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
c.load_cert_chain(sys.argv[1], sys.argv[2])' "$T/certs/p256.pem" "$f" 2>"$f.py.err" || rc=$?
	cat "$f.py.err"
	[ "$rc" -eq 1 ] || { echo "python: status $rc, expected an exception (1)" >&2; return 1; }
}

nope="pkcs11:token=$P11AGENT_TEST_TOKEN;object=nope;type=private"
mkref p11agent "$nope" EC >"$T/nope.ref"
tap_case "ref naming a key that does not exist: 'no such key' naming the URI" \
	bad_ref "$T/nope.ref" 'no such key|no key matches' "$nope"

head -n 3 "$T/p256.ref" >"$T/truncated.ref"
tap_case "truncated ref (no END line): 'truncated'" bad_ref "$T/truncated.ref" 'truncated'

head -c 100 "$T/p256.ref" >"$T/cut.ref"
tap_case "ref cut in the middle of the base64: clean failure" bad_ref "$T/cut.ref" 'truncated|malformed'

{
	echo "-----BEGIN P11AGENT KEY REFERENCE-----"
	echo 'MIGOAgEBDIG!!!*not base64 at all*'
	echo "-----END P11AGENT KEY REFERENCE-----"
} >"$T/garbage.ref"
tap_case "garbage base64: 'invalid base64'" bad_ref "$T/garbage.ref" 'invalid base64'

# valid base64 of a DER whose lengths lie
{
	echo "-----BEGIN P11AGENT KEY REFERENCE-----"
	printf '\x30\x84\xff\xff\xff\xff\x02\x01\x01' | base64
	echo "-----END P11AGENT KEY REFERENCE-----"
} >"$T/hugelen.ref"
tap_case "DER with a huge length: 'malformed'" bad_ref "$T/hugelen.ref" 'malformed.*length'

mkref p11agent "$(uri p256)?pin-value=1234" EC >"$T/pin.ref"
tap_case "ref holding pin-value is refused when read" bad_ref "$T/pin.ref" 'PIN attribute'

mkref p11agent "$(uri p256)" RSA >"$T/wrongtype.ref"
tap_case "ref whose type is not the key's: error naming both" \
	bad_ref "$T/wrongtype.ref" 'says .* RSA key, the agent has a EC key' "$(uri p256)"

# The agent stopped: a clean error naming the URI and the agent.
no_agent() {
	agent_stop >/dev/null 2>&1
	bad_ref "$T/p256.ref" 'not reachable|not running' 'object=p256'
}
tap_case "agent not running: error names the URI and the agent" no_agent

# A reference to a token that is not there: a new token (same label, new
# serial) under a fresh agent. The canonical URI names the old serial.
absent_token() {
	local u
	u=$(openssl asn1parse -in "$T/p256.ref" | sed -n 's/.*UTF8STRING *:\(pkcs11:.*\)$/\1/p')
	[ -n "$u" ] || { echo "no URI in p256.ref" >&2; return 1; }
	"$IT_LIB_DIR/mktoken.sh" "$T/other" >"$T/other.log" 2>&1 ||
		{ cat "$T/other.log" >&2; return 1; }
	SOFTHSM2_CONF=$T/other/softhsm2.conf agent_start "$T/other/pin" || return 1
	# the new token's key itself works (by URI)
	client pkey -in "$(uri p256)" -pubout -out /dev/null || return 1
	bad_ref "$T/p256.ref" 'no key matches.*token present' "$u"
}
tap_case "ref whose token is absent: 'no key matches ... token present?'" absent_token

tap_case "agent exits with status 0 on SIGTERM" agent_stop
tap_done
