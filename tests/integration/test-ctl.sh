#!/bin/bash
# p11agentctl as a user meets it: options after the command, JSON that
# parses, fingerprints that match the public key, the pubkey verb, exit
# statuses for no match and for stray arguments, messages that name the URI
# once.
. "$(dirname "$0")/lib.sh"

it_setup
agent_start || tap_bail "p11agentd did not start"

ctl() { with_timeout 20 "$P11AGENTCTL" --socket "$SOCK" "$@"; }

keys_json_after_command() {
	ctl keys --json >"$T/keys.json" || return 1
	python3 - "$T/keys.json" "$IT_KEYS" <<'PY'
import json, sys
keys = json.load(open(sys.argv[1]))
labels = {k["label"] for k in keys}
want = set(sys.argv[2].split())
assert want <= labels, f"labels {labels} lack {want - labels}"
for k in keys:
    assert k["fingerprint"].startswith("SHA256:"), k
    c = k.get("certificate")
    assert c and "CN=" + k["label"] in c["subject"], k
    assert c["not_after"].endswith("Z") and len(c["not_after"]) == 20, c
print("ok", len(keys), "keys")
PY
}
tap_case "keys --json (flag after the command) parses, with fingerprints, subjects and expiry" \
	keys_json_after_command

# fingerprint_matches KEY: keys' fingerprint is SHA256 of the certificate's SPKI
fingerprint_matches() {
	local k=$1 want got
	want=SHA256:$(plain x509 -in "$T/certs/$k.pem" -pubkey -noout |
		plain pkey -pubin -outform DER | plain dgst -sha256 -binary | base64 | tr -d '=')
	got=$(ctl keys "$(uri "$k")" | sed -n 's/^ *fingerprint: //p')
	echo "want $want got $got"
	[ -n "$got" ] && [ "$got" = "$want" ]
}
for k in $IT_KEYS; do
	tap_case "keys: $k fingerprint is SHA256 of its SPKI" fingerprint_matches "$k"
done

pubkey_verb() {
	ctl pubkey "$(uri p256)" >"$T/p256.pub.pem" || return 1
	plain x509 -in "$T/certs/p256.pem" -pubkey -noout >"$T/p256.cert.pub" || return 1
	cmp "$T/p256.pub.pem" "$T/p256.cert.pub" || return 1
	ctl pubkey "$(uri rsa2048)" -o "$T/rsa.pub" &&
		plain pkey -pubin -in "$T/rsa.pub" -noout -text | grep -q 'Public-Key: (2048 bit)'
}
tap_case "pubkey URI [-o FILE] writes the token key's public key (PEM)" pubkey_verb

no_match_fails() {
	local rc=0
	ctl keys 'pkcs11:object=no-such-key' >"$T/nm.out" 2>"$T/nm.err" || rc=$?
	cat "$T/nm.err"
	[ "$rc" -eq 1 ] && grep -q "no key matches 'pkcs11:object=no-such-key'" "$T/nm.err"
}
tap_case "keys with a URI that matches nothing exits 1 and says so" no_match_fails

extra_args_refused() {
	local rc=0
	ctl status extra >/dev/null 2>"$T/ex.err" || rc=$?
	cat "$T/ex.err"
	[ "$rc" -eq 2 ] && grep -q "takes no arguments" "$T/ex.err" || return 1
	rc=0
	ctl tokens extra >/dev/null 2>"$T/ex2.err" || rc=$?
	[ "$rc" -eq 2 ]
}
tap_case "status and tokens refuse stray arguments (exit 2)" extra_args_refused

uri_named_once() {
	local rc=0 n
	ctl cert 'pkcs11:bad;;==' -o - >/dev/null 2>"$T/bad.err" || rc=$?
	cat "$T/bad.err"
	n=$(grep -o "pkcs11:bad;;==" "$T/bad.err" | wc -l)
	[ "$rc" -eq 1 ] && [ "$n" -eq 1 ]
}
tap_case "an invalid URI is named once in the message" uri_named_once

stop_verb() {
	local i
	ctl stop | grep -qx stopping || return 1
	for ((i = 0; i < 100; i++)); do
		kill -0 "$AGENT_PID" 2>/dev/null || break
		sleep 0.1
	done
	kill -0 "$AGENT_PID" 2>/dev/null && { echo "the agent is still running" >&2; return 1; }
	wait "$AGENT_PID"
	local rc=$?
	AGENT_PID=""
	[ "$rc" -eq 0 ] || { echo "the agent exited with status $rc" >&2; return 1; }
	grep -q "stopping: asked by uid $(id -u)" "$T/agent.log" && grep -q "event=stop" "$T/agent.log"
}
tap_case "p11agentctl stop: the agent stops, exit status 0, logged and audited" stop_verb
agent_start || tap_bail "p11agentd did not start again"

tap_done
