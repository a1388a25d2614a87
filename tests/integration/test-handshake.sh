#!/bin/bash
# Mutual TLS with token keys: openssl s_client -key pkcs11:... against
# openssl s_server (software server key) that requires and verifies a client
# certificate. Each case checks the server's own view (its -www status page):
# the client certificate's subject, verify result, protocol and the
# signature type of the client's CertificateVerify, and that the agent's
# signature counter went up.
. "$(dirname "$0")/lib.sh"

it_setup
agent_start || tap_bail "p11agentd did not start"

# hs_token KEY PROTO [SIGALGS [SIGTYPE]]: token key KEY (a label).
hs_token() {
	local k=$1 proto=$2 sigalgs=${3:-} sigtype=${4:-} before after dir
	dir=$T/hs-$k-$proto${sigalgs:+-$sigalgs}
	[ -n "$sigtype" ] || sigtype=$(sigtype_of "$k")
	before=$(agent_signatures) || return 1
	mtls "$dir" "$(uri "$k")" "$T/certs/$k.pem" "$proto" "$sigalgs" ||
		echo "s_client exited with status $?" >&2
	mtls_accepted "$dir" "$k" "${proto/tls1_/TLSv1.}" "$sigtype" || return 1
	after=$(agent_signatures) || return 1
	# One handshake, one signature (CertificateVerify): none means the key
	# did not sign through the agent, more means extra work per handshake.
	if [ "$after" -ne $((before + 1)) ]; then
		echo "agent signature counter $before -> $after: expected exactly one signature" >&2
		return 1
	fi
	echo "signatures: $before -> $after"
}

# Same handshake with a software key and no p11agent provider: checks the
# harness itself, so that a failure below is the agent's or provider's.
hs_soft() {
	local k=$1 proto=$2 dir
	dir=$T/soft-$k-$proto
	IT_CNF=/dev/null mtls "$dir" "$T/soft/$k.key" "$T/soft/$k.pem" "$proto" ||
		echo "s_client exited with status $?" >&2
	mtls_accepted "$dir" "soft-$k" "${proto/tls1_/TLSv1.}" "$(sigtype_of "$k")"
}

tap_case "harness: software rsa2048 TLS 1.3" hs_soft rsa2048 tls1_3
tap_case "harness: software ed25519 TLS 1.2" hs_soft ed25519 tls1_2

for k in rsa2048 p256 p384 ed25519; do
	for proto in tls1_3 tls1_2; do
		tap_case "$k TLS ${proto/tls1_/1.} client certificate accepted" hs_token "$k" "$proto"
	done
done
tap_case "rsa2048 TLS 1.2 RSA-PSS (rsa_pss_rsae_sha256)" \
	hs_token rsa2048 tls1_2 rsa_pss_rsae_sha256 RSA-PSS
tap_case "rsa2048 TLS 1.2 RSA-PSS SHA-384 (rsa_pss_rsae_sha384)" \
	hs_token rsa2048 tls1_2 rsa_pss_rsae_sha384 RSA-PSS
tap_case "rsa2048 TLS 1.2 PKCS#1 v1.5 (RSA+SHA256)" \
	hs_token rsa2048 tls1_2 RSA+SHA256 RSA
tap_case "p384 TLS 1.3 ecdsa_secp384r1_sha384" \
	hs_token p384 tls1_3 ecdsa_secp384r1_sha384 ECDSA
tap_case "ed25519 TLS 1.2 sigalgs ed25519" hs_token ed25519 tls1_2 ed25519 ed25519

# default_properties = ?provider=default (a preference, as distributions
# ship it) must leave token keys usable.
pref_cnf() {
	write_cnf "$T/pref.cnf" "alg_section = alg_sect
[alg_sect]
default_properties = ?provider=default"
	IT_CNF=$T/pref.cnf hs_token p256 tls1_3
}
tap_case "p256 TLS 1.3 with default_properties = ?provider=default" pref_cnf

# Negative control: without the agent the same handshake must fail, quickly,
# and the server must not have accepted a client certificate.
hs_no_agent() {
	local dir=$T/hs-no-agent rc=0
	mtls "$dir" "$(uri rsa2048)" "$T/certs/rsa2048.pem" tls1_3 || rc=$?
	if [ "$rc" -eq 0 ]; then
		echo "s_client succeeded without an agent" >&2
		return 1
	fi
	if [ "$rc" -eq 124 ] || [ "$rc" -gt 128 ]; then
		echo "s_client hung or died by a signal (status $rc)" >&2
		return 1
	fi
	if grep -q '^Client certificate' "$dir/page"; then
		echo "server accepted a client certificate without an agent" >&2
		return 1
	fi
	echo "s_client failed with status $rc:"
	cat "$dir/client.err"
}
tap_case "agent exits with status 0 on SIGTERM" agent_stop
tap_case "negative control: agent stopped, handshake fails" hs_no_agent

tap_done
