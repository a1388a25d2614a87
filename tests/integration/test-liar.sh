#!/bin/bash
# A module that lies (tests/fault/p11fault.so, `lie` commands): an oversized
# signature length, huge, growing and garbage attributes, a token label of
# invalid UTF-8 without padding. With each lie in turn the agent stays up,
# warns naming token and object, and clients get a clear error for the lying
# key; with the lie off a real client (openssl pkeyutl through the provider)
# signs again and the signature verifies with the certificate's key.
. "$(dirname "$0")/lib.sh"

it_setup
for v in P11FAULT_SO P11FAULT_CTL; do
	[ -n "${!v:-}" ] || tap_bail "$v is not set (run through meson test)"
done
command -v python3 >/dev/null || tap_bail "python3 not installed"

export P11FAULT_MODULE=$MODULE P11FAULT_CONTROL=$T/fault.ctl P11FAULT_STATE=$T/fault.state
MODULE=$P11FAULT_SO
: >"$P11FAULT_CONTROL"
TOK="token=$P11AGENT_TEST_TOKEN"
fault() { with_timeout 30 "$P11FAULT_CTL" "$@"; }
ctl() { with_timeout 30 "$P11AGENTCTL" --socket "$SOCK" "$@"; }

head -c 100 /dev/urandom >"$T/msg"
plain dgst -sha256 -binary -out "$T/msg.sha256" "$T/msg" || tap_bail "openssl dgst"
for k in p256 rsa2048; do
	plain x509 -in "$T/certs/$k.pem" -pubkey -noout -out "$T/$k.pub" ||
		tap_bail "cannot read the public key of certs/$k.pem"
done

# sign_verify KEY [URI]: pkeyutl -sign through the agent, -verify with the
# certificate's public key by the default provider alone.
sign_verify() {
	local k=$1 u=${2:-$(uri "$1")} opts=()
	[ "$k" = rsa2048 ] && opts=(-pkeyopt digest:sha256)
	rm -f "$T/$k.sig"
	client pkeyutl -sign -inkey "$u" "${opts[@]}" -in "$T/msg.sha256" -out "$T/$k.sig" ||
		{ echo "pkeyutl -sign with $k failed ($?)" >&2; return 1; }
	plain pkeyutl -verify -pubin -inkey "$T/$k.pub" "${opts[@]}" -in "$T/msg.sha256" \
		-sigfile "$T/$k.sig" || { echo "the $k signature does not verify" >&2; return 1; }
}

# sign_fails KEY PATTERN: the client's signature fails (no crash: exit 1),
# its error output matches PATTERN (grep -E, any case).
sign_fails() {
	local k=$1 rc=0
	client pkeyutl -sign -inkey "$(uri "$k")" -in "$T/msg.sha256" -out "$T/$k.bad" \
		2>"$T/$k.err" || rc=$?
	if [ "$rc" -eq 0 ]; then
		echo "signed with $k through the lie" >&2
		return 1
	fi
	[ "$rc" -eq 1 ] || { echo "pkeyutl exited $rc" >&2; cat "$T/$k.err" >&2; return 1; }
	grep -Eqi "$2" "$T/$k.err" || { echo "no '$2' in:" >&2; cat "$T/$k.err" >&2; return 1; }
}

agent_alive() {
	kill -0 "$AGENT_PID" 2>/dev/null || { echo "p11agentd is gone" >&2; return 1; }
	ctl status >/dev/null || { echo "p11agentctl status failed" >&2; return 1; }
}

tokens_count() { ctl --json tokens | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))'; }
wait_tokens() {
	for _ in $(seq 100); do
		[ "$(tokens_count)" = "$1" ] && return 0
		sleep 0.1
	done
	echo "the agent lists $(tokens_count) tokens, wanted $1" >&2
	return 1
}

# rescan: the agent reads every object again, now through the lie (an
# unlock logs in, which is a no-op when logged in, and rescans at once).
rescan() {
	ctl lock "pkcs11:$TOK" >/dev/null || { echo "p11agentctl lock failed" >&2; return 1; }
	ctl unlock "pkcs11:$TOK" <"$T/pin" >/dev/null || { echo "p11agentctl unlock failed" >&2; return 1; }
	wait_tokens 1
}

# keys_json: the key list as JSON; fails if p11agentctl fails or the output
# is not valid UTF-8 JSON.
keys_json() {
	ctl --json keys >"$T/keys.json" || { echo "p11agentctl keys failed" >&2; return 1; }
	python3 -c 'import json,sys; json.load(open(sys.argv[1], encoding="utf-8"))' \
		"$T/keys.json" || { cat "$T/keys.json" >&2; return 1; }
}
key_listed() { keys_json && grep -q "object=$1;" "$T/keys.json"; }

cat >"$T/agent.conf" <<CONF
[agent]
poll-interval = 1
CONF
IT_AGENT_ARGS=(--config "$T/agent.conf")
agent_start || tap_bail "p11agentd did not start on p11fault.so"

case_honest() { sign_verify p256 && sign_verify rsa2048; }
tap_case "without lies p256 and rsa2048 sign and verify" case_honest

# --- a signature length larger than the buffer -----------------------------
case_sig_len() {
	local k
	local n
	for k in p256 rsa2048; do
		fault do "lie sig-len 100000" || return 1
		n=$(grep -ac "returned a 100000-byte .*object=$k;.*the module is faulty" "$T/agent.log")
		sign_fails "$k" "device|faulty|100000" || return 1
		agent_alive || return 1
		# the agent refused the length itself (the audit line says why)
		[ "$(grep -ac "returned a 100000-byte .*object=$k;.*the module is faulty" "$T/agent.log")" \
			-gt "$n" ] || { echo "no 'module is faulty' audit line for $k" >&2; return 1; }
		fault do "lie sig-len off" || return 1
		sign_verify "$k" || return 1
	done
}
tap_case "oversized ulSignatureLen: a clear error, never the bytes behind the buffer; then signs" \
	case_sig_len

# --- attributes ---------------------------------------------------------------
# attr_case LIE KEY WHY GONE: with LIE on (and a rescan) the agent stays up
# and warns about KEY's object naming the token and WHY; with GONE=1 the
# key is not listed and a client gets "no such key"; otherwise it is still
# listed (its public key from another object) and signs. Then the lie goes
# and the key signs again.
attr_case() {
	local rc=0
	attr_lie "$@" || rc=1
	fault do "lie off" || return 1
	rescan || return 1
	key_listed "$2" || { echo "$2 not back after the lie" >&2; return 1; }
	sign_verify "$2" && return "$rc"
}
attr_lie() {
	local lie=$1 k=$2 why=$3 gone=$4
	fault do "$lie" || return 1
	rescan || return 1
	agent_alive || return 1
	grep -a "token '$P11AGENT_TEST_TOKEN'" "$T/agent.log" | grep -a "'$k'" | grep -a "skipped" |
		grep -aq "$why" || { echo "no warning about $k: $why" >&2; tail -5 "$T/agent.log" >&2; return 1; }
	if [ "$gone" = 1 ]; then
		if key_listed "$k"; then
			echo "$k still listed" >&2
			return 1
		fi
		sign_fails "$k" "no such key|not found|no key|NoSuchKey|could not|unable to load" || return 1
	else
		key_listed "$k" || { echo "$k not listed" >&2; return 1; }
		sign_verify "$k" || return 1
	fi
	key_listed "$([ "$k" = p256 ] && echo rsa2048 || echo p256)" ||
		{ echo "the other key went too" >&2; return 1; }
}
tap_case "huge CKA_ID on every p256 object: key skipped with a warning, NoSuchKey" \
	attr_case "lie huge CKA_ID p256" p256 "CKA_ID is 4294967280 bytes long" 1
tap_case "huge CKA_EC_POINT: public key object skipped, the certificate still tells the key" \
	attr_case "lie huge CKA_EC_POINT p256" p256 "CKA_EC_POINT is 4294967280 bytes long" 0
tap_case "CKA_MODULUS longer than its buffer: rsa2048's key objects skipped, NoSuchKey" \
	attr_case "lie grow CKA_MODULUS rsa2048" rsa2048 "CKA_MODULUS: .* bytes returned into" 1
tap_case "garbage CKA_EC_PARAMS: p256 public key object skipped" \
	attr_case "lie garbage CKA_EC_PARAMS p256" p256 "CKA_EC_PARAMS and CKA_EC_POINT do not" 0
tap_case "garbage CKA_MODULUS: rsa2048 key objects skipped, NoSuchKey" \
	attr_case "lie garbage CKA_MODULUS rsa2048" rsa2048 "CKA_MODULUS and CKA_PUBLIC_EXPONENT do not" 1
tap_case "garbage certificate CKA_VALUE: certificate skipped" \
	attr_case "lie garbage CKA_VALUE p256" p256 "CKA_VALUE is not an X.509 certificate" 0

# garbage for every public source of a key: private key, public key and
# certificate all lie, so the key cannot be listed
case_all_garbage() {
	fault do "lie garbage CKA_EC_POINT p256" "lie garbage CKA_VALUE p256" || return 1
	rescan || return 1
	agent_alive || return 1
	if key_listed p256; then
		echo "p256 listed from garbage" >&2
		return 1
	fi
	sign_fails p256 "no such key|not found|no key|NoSuchKey|could not|unable to load" || return 1
	fault do "lie off" || return 1
	rescan || return 1
	sign_verify p256
}
tap_case "garbage point and certificate: p256 not listed, a clear error; back after the lie" \
	case_all_garbage

# --- token label ---------------------------------------------------------------
case_token_label() {
	local label
	fault do "lie token-label $TOK" || return 1
	# the agent sees another token (the label is part of its identity)
	for _ in $(seq 50); do
		ctl --json tokens >"$T/tokens.json" 2>/dev/null && grep -q liar "$T/tokens.json" && break
		sleep 0.1
	done
	agent_alive || return 1
	label=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1], encoding="utf-8"))[0]["label"])' \
		"$T/tokens.json") || { cat "$T/tokens.json" >&2; return 1; }
	case $label in *liar*) ;; *) echo "label '$label'" >&2; return 1 ;; esac
	keys_json || return 1
	ctl tokens >/dev/null || return 1
	# the key still signs by a URI without the token
	sign_verify p256 "pkcs11:object=p256;type=private" || return 1
	fault do "lie token-label $TOK off" || return 1
	for _ in $(seq 50); do
		ctl --json tokens 2>/dev/null | grep -q "\"$P11AGENT_TEST_TOKEN\"" && break
		sleep 0.1
	done
	sign_verify p256
}
tap_case "token label of invalid UTF-8 without padding: valid UTF-8 in every answer, keys sign" \
	case_token_label

tap_case "the agent is still up" agent_alive
tap_case "agent exits with status 0 on SIGTERM" agent_stop
case_no_sanitizer() {
	if grep -aE "Sanitizer|runtime error" "$T/agent.log"; then
		return 1
	fi
}
tap_case "no sanitizer report in the agent log" case_no_sanitizer
tap_done
