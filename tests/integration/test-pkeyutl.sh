#!/bin/bash
# Signatures outside TLS: openssl pkeyutl, dgst and req with pkcs11: URIs.
# Every signature is verified by the default provider alone (OPENSSL_CONF=
# /dev/null) with the public key from the key's certificate, and the agent's
# signature counter must have moved (the token signed, not a software copy).
. "$(dirname "$0")/lib.sh"

it_setup
agent_start || tap_bail "p11agentd did not start"

head -c 1000 /dev/urandom >"$T/msg"
for k in $IT_KEYS; do
	plain x509 -in "$T/certs/$k.pem" -pubkey -noout -out "$T/$k.pub" ||
		tap_bail "cannot read the public key of certs/$k.pem"
done

# signed_by_agent BEFORE: the counter is now at least BEFORE + 1.
signed_by_agent() {
	local after
	after=$(agent_signatures) || return 1
	if [ "$after" -lt $(($1 + 1)) ]; then
		echo "agent signature counter $1 -> $after: no signature went through the agent" >&2
		return 1
	fi
	echo "signatures: $1 -> $after"
}

# pkeyutl_case KEY [PKEYOPT...]: pkeyutl -sign with the token key, -verify
# with the certificate's public key and the same options. RSA without
# options: PKCS#1 v1.5 with digest:sha256.
pkeyutl_case() {
	local k=$1 before sig md=sha256 in raw=() opts=() o
	sig=$T/$k.pkeyutl.sig
	shift
	for o in "$@"; do
		opts+=(-pkeyopt "$o")
		[[ $o != digest:* ]] || md=${o#digest:}
	done
	# pkeyutl signs a digest made here, except Ed25519 (the message itself)
	plain dgst "-$md" -binary -out "$T/msg.$md" "$T/msg" || return 1
	in=$T/msg.$md
	case $k in
	ed25519) in=$T/msg raw=(-rawin) ;;
	rsa*) [ $# -gt 0 ] || opts=(-pkeyopt digest:sha256) ;;
	esac
	rm -f "$sig"
	before=$(agent_signatures) || return 1
	client pkeyutl -sign -inkey "$(uri "$k")" "${raw[@]}" "${opts[@]}" \
		-in "$in" -out "$sig" || { echo "pkeyutl -sign failed ($?)" >&2; return 1; }
	[ -s "$sig" ] || { echo "no signature written" >&2; return 1; }
	plain pkeyutl -verify -pubin -inkey "$T/$k.pub" "${raw[@]}" "${opts[@]}" \
		-in "$in" -sigfile "$sig" || { echo "signature does not verify" >&2; return 1; }
	signed_by_agent "$before"
}

# dgst_case KEY DIGEST: openssl dgst -sign / -verify.
dgst_case() {
	local k=$1 md=$2 before sig
	sig=$T/$k.dgst.sig
	rm -f "$sig"
	before=$(agent_signatures) || return 1
	client dgst "-$md" -sign "$(uri "$k")" -out "$sig" "$T/msg" ||
		{ echo "dgst -sign failed ($?)" >&2; return 1; }
	plain dgst "-$md" -verify "$T/$k.pub" -signature "$sig" "$T/msg" ||
		{ echo "signature does not verify" >&2; return 1; }
	signed_by_agent "$before"
}

# req_case KEY: a CSR signed by the token key; openssl req -verify accepts
# it and it carries the certificate's public key.
req_case() {
	local k=$1 before csr
	csr=$T/$k.csr
	rm -f "$csr"
	before=$(agent_signatures) || return 1
	client req -new -key "$(uri "$k")" -subj "/CN=x" -out "$csr" ||
		{ echo "req -new failed ($?)" >&2; return 1; }
	plain req -verify -in "$csr" -noout || { echo "CSR does not verify" >&2; return 1; }
	plain req -in "$csr" -pubkey -noout -out "$csr.pub" || return 1
	cmp -s "$csr.pub" "$T/$k.pub" ||
		{ echo "CSR public key differs from the certificate's" >&2; return 1; }
	signed_by_agent "$before"
}

for k in $IT_KEYS; do
	tap_case "$k: pkeyutl -sign verifies with the certificate key" pkeyutl_case "$k"
done
tap_case "rsa2048: pkeyutl -sign RSA-PSS verifies" pkeyutl_case rsa2048 \
	rsa_padding_mode:pss rsa_pss_saltlen:digest digest:sha256
tap_case "rsa2048: pkeyutl -sign PKCS#1 SHA-512 verifies" pkeyutl_case rsa2048 \
	rsa_padding_mode:pkcs1 digest:sha512

# openssl dgst in 3.0 cannot sign with Ed25519 (it needs one-shot
# EVP_DigestSign), so Ed25519 goes through pkeyutl -rawin above only.
tap_case "rsa2048: dgst -sha256 -sign verifies" dgst_case rsa2048 sha256
tap_case "p256: dgst -sha256 -sign verifies" dgst_case p256 sha256
tap_case "p384: dgst -sha384 -sign verifies" dgst_case p384 sha384

for k in $IT_KEYS; do
	tap_case "$k: req -new makes a CSR that req -verify accepts" req_case "$k"
done

# The agent client (p11agent-bus.so, libdbus and its dependencies) is loaded
# on the first agent call, not with the provider: a program that loads the
# provider and signs with a key file loads no libdbus.
libdbus_loaded() { LD_DEBUG=libs client "$@" 2>&1 >/dev/null | grep -c 'calling init: .*libdbus-1\.so'; }
case_lazy_bus() {
	local n
	plain genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$T/soft.key" || return 1
	plain dgst -sha256 -binary -out "$T/msg.sha256" "$T/msg" || return 1
	n=$(libdbus_loaded pkeyutl -sign -inkey "$T/soft.key" -in "$T/msg.sha256" -out "$T/soft.sig")
	echo "software key: libdbus initialised $n times"
	[ "$n" -eq 0 ] || { echo "the provider loaded libdbus for a software key" >&2; return 1; }
	n=$(libdbus_loaded pkeyutl -sign -inkey "$(uri p256)" -in "$T/msg.sha256" -out "$T/lazy.sig")
	echo "agent key: libdbus initialised $n times"
	[ "$n" -ge 1 ] || { echo "no libdbus for an agent key (LD_DEBUG output changed?)" >&2; return 1; }
	plain pkeyutl -verify -pubin -inkey "$T/p256.pub" -in "$T/msg.sha256" -sigfile "$T/lazy.sig"
}
tap_case "a software key with the provider loaded loads no libdbus; an agent key loads it and signs" \
	case_lazy_bus

# p11agent.so without p11agent-bus.so beside it: agent keys fail with an
# error naming the missing module; nothing crashes or hangs.
case_bus_missing() {
	mkdir -p "$T/alone"
	cp "$P11AGENT_SO" "$T/alone/p11agent.so" || return 1
	sed "s|^module = .*|module = $T/alone/p11agent.so|" "$CNF" >"$T/alone.cnf"
	if IT_CNF=$T/alone.cnf client pkeyutl -sign -inkey "$(uri p256)" -in "$T/msg.sha256" \
		-out "$T/alone.sig" 2>"$T/alone.err"; then
		echo "signed without p11agent-bus.so" >&2
		return 1
	fi
	cat "$T/alone.err"
	grep -q "p11agent-bus.so" "$T/alone.err" ||
		{ echo "the error does not name p11agent-bus.so" >&2; return 1; }
}
tap_case "without p11agent-bus.so an agent key fails with an error naming it" case_bus_missing

tap_case "agent exits with status 0 on SIGTERM" agent_stop
tap_done
