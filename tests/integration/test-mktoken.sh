#!/bin/bash
# The token fixture itself: mktoken.sh makes, quickly, a token whose keys
# cannot leave it, and certificates that belong to those keys (checked by
# signing on the token with pkcs11-tool, no agent involved).
. "$(dirname "$0")/lib.sh"

T=$(mktemp -d "${TMPDIR:-/tmp}/p11agent-mktoken.XXXXXX") || tap_bail "mktemp failed"
trap it_cleanup EXIT
D=$T/fixture

# How long it took is reported, not asserted: the machine is shared.
start=$(date +%s%N)
tap_case "mktoken.sh makes a token" "$IT_LIB_DIR/mktoken.sh" "$D"
echo "# mktoken.sh took $((($(date +%s%N) - start) / 1000000)) ms"
[ -s "$D/env" ] || { tap_done; }
set -a
# shellcheck disable=SC1091
. "$D/env"
set +a
P11=(pkcs11-tool --module "$P11AGENT_TEST_MODULE" --token-label "$P11AGENT_TEST_TOKEN")

files() {
	local f mode
	for f in softhsm2.conf env pin so-pin ca.pem ca.key server.pem server.key \
		certs/{rsa2048,p256,p384,ed25519}.pem soft/{rsa2048,p256,p384,ed25519}.{key,pem}; do
		[ -s "$D/$f" ] || { echo "missing $f" >&2; return 1; }
	done
	for f in pin so-pin ca.key server.key soft/p256.key; do
		mode=$(stat -c %a "$D/$f")
		[ "$mode" = 600 ] || { echo "$f has mode $mode, not 600" >&2; return 1; }
	done
	[ "$(wc -l <"$D/pin")" -eq 0 ] || { echo "pin ends in a newline" >&2; return 1; }
	[ "$(wc -c <"$D/pin")" -ge 4 ] || { echo "pin too short" >&2; return 1; }
	grep -q "^directories.tokendir = $D/tokens\$" "$D/softhsm2.conf" || return 1
	grep -q '^objectstore.backend = file$' "$D/softhsm2.conf" || return 1
	[ "$SOFTHSM2_CONF" = "$D/softhsm2.conf" ] || { echo "env: SOFTHSM2_CONF" >&2; return 1; }
	[ -f "$P11AGENT_TEST_MODULE" ] || { echo "env: no module" >&2; return 1; }
}
tap_case "files, modes, PIN without newline, env" files

private_keys() {
	local k
	with_timeout 20 "${P11[@]}" --list-objects >"$T/public.txt" 2>&1 || return 1
	with_timeout 20 "${P11[@]}" --login --pin "$(cat "$D/pin")" --list-objects \
		>"$T/all.txt" 2>&1 || return 1
	if grep -q '^Private Key Object' "$T/public.txt"; then
		echo "private keys visible without login" >&2
		return 1
	fi
	[ "$(grep -c '^Private Key Object' "$T/all.txt")" -eq 4 ] ||
		{ echo "not 4 private keys" >&2; cat "$T/all.txt" >&2; return 1; }
	[ "$(grep -c '^ *Access: *sensitive, always sensitive, never extractable, local$' "$T/all.txt")" -eq 4 ] ||
		{ echo "a private key is not sensitive/never extractable/local:" >&2
		  grep Access "$T/all.txt" >&2; return 1; }
	for k in 01 02 03 04; do
		if with_timeout 20 "${P11[@]}" --login --pin "$(cat "$D/pin")" \
			--read-object --type privkey --id "$k" -o "$T/leak.der" >/dev/null 2>&1 &&
			[ -s "$T/leak.der" ]; then
			echo "private key $k could be read off the token" >&2
			return 1
		fi
	done
	[ "$(grep -c '^Certificate Object' "$T/public.txt")" -eq 4 ] ||
		{ echo "not 4 certificates visible without login" >&2; return 1; }
}
tap_case "4 private keys: CKA_PRIVATE, sensitive, never extractable, unreadable" private_keys

# token_sign KEY: sign on the token with pkcs11-tool, verify with the
# public key in certs/KEY.pem: the certificate belongs to the token key.
token_sign() {
	local k=$1 id mech=() vopts=() in=$T/msg
	head -c 500 /dev/urandom >"$T/msg"
	case $k in
	rsa2048) id=01 mech=(--mechanism SHA256-RSA-PKCS) ;;
	p256) id=02 mech=(--mechanism ECDSA --signature-format openssl) ;;
	p384) id=03 mech=(--mechanism ECDSA --signature-format openssl) ;;
	ed25519) id=04 mech=(--mechanism EDDSA) vopts=(-rawin) ;;
	esac
	if [[ $k == p* ]]; then
		plain dgst -sha256 -binary -out "$T/msg.dgst" "$T/msg" || return 1
		in=$T/msg.dgst
	fi
	with_timeout 20 "${P11[@]}" --login --pin "$(cat "$D/pin")" --sign "${mech[@]}" \
		--id "$id" -i "$in" -o "$T/$k.sig" || return 1
	plain x509 -in "$D/certs/$k.pem" -pubkey -noout -out "$T/$k.pub" || return 1
	if [ "$k" = rsa2048 ]; then
		plain dgst -sha256 -verify "$T/$k.pub" -signature "$T/$k.sig" "$in"
	else
		plain pkeyutl -verify -pubin -inkey "$T/$k.pub" "${vopts[@]}" -in "$in" \
			-sigfile "$T/$k.sig"
	fi
}
for k in rsa2048 p256 p384 ed25519; do
	tap_case "$k: token signature verifies with certs/$k.pem" token_sign "$k"
done

token_certs() {
	local k
	for k in rsa2048 p256 p384 ed25519; do
		with_timeout 20 "${P11[@]}" --read-object --type cert --label "$k" \
			-o "$T/$k.crt.der" || return 1
		plain x509 -inform DER -in "$T/$k.crt.der" -out "$T/$k.crt.pem" || return 1
		plain x509 -in "$D/certs/$k.pem" -out "$T/$k.file.pem" || return 1
		cmp -s "$T/$k.crt.pem" "$T/$k.file.pem" ||
			{ echo "certificate $k on the token differs from certs/$k.pem" >&2; return 1; }
	done
}
tap_case "certificates on the token equal certs/<label>.pem" token_certs

pki() {
	local c
	for c in "$D"/certs/*.pem "$D"/soft/*.pem; do
		plain verify -CAfile "$D/ca.pem" -purpose sslclient "$c" || return 1
		plain x509 -in "$c" -noout -ext extendedKeyUsage | grep -q 'TLS Web Client Authentication' ||
			{ echo "$c lacks clientAuth" >&2; return 1; }
	done
	plain verify -CAfile "$D/ca.pem" -purpose sslserver -verify_hostname localhost \
		"$D/server.pem" || return 1
	plain verify -CAfile "$D/ca.pem" -purpose sslserver -verify_ip 127.0.0.1 \
		"$D/server.pem" || return 1
	plain x509 -in "$D/server.pem" -noout -subject | grep -q 'CN *= *localhost'
}
tap_case "CA, client certificates (clientAuth), server certificate (localhost, 127.0.0.1)" pki

rerun() {
	local n
	"$IT_LIB_DIR/mktoken.sh" "$D" || return 1
	n=$(with_timeout 20 softhsm2-util --show-slots | grep -c "Label: *$P11AGENT_TEST_TOKEN *\$")
	[ "$n" -eq 1 ] || { echo "$n tokens labelled $P11AGENT_TEST_TOKEN after a rerun" >&2; return 1; }
	token_sign p256
}
tap_case "mktoken.sh again on the same DIR: one fresh token" rerun

tap_done
