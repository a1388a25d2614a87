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

tap_case "agent exits with status 0 on SIGTERM" agent_stop
tap_done
