#!/bin/bash
# mktoken.sh DIR — make a fresh SoftHSM2 token and a test PKI in DIR.
#
# Creates (all paths under DIR):
#   softhsm2.conf        tokendir DIR/tokens, file object store, log level ERROR
#   env                  VAR=value lines: SOFTHSM2_CONF, P11AGENT_TEST_MODULE,
#                        P11AGENT_TEST_TOKEN, ... (use: set -a; . DIR/env; set +a)
#   pin, so-pin          user and SO PIN, mode 0600, one line WITHOUT a trailing
#                        newline (the agent's file: pin source must also accept
#                        a file that ends in one newline, and strip it)
#   tokens/              token "p11agent-test" holding four key pairs generated
#                        ON the token (private keys CKA_SENSITIVE, not
#                        CKA_EXTRACTABLE, CKA_PRIVATE) plus their certificates:
#                          id 01 rsa2048  RSA-2048
#                          id 02 p256     EC P-256
#                          id 03 p384     EC P-384
#                          id 04 ed25519  Ed25519 (CKA_EC_PARAMS is the
#                                         PrintableString "edwards25519", as
#                                         OpenSC writes it, not the OID)
#                        With P11AGENT_TEST_EXTRA_KEYS=p521 in the environment,
#                        a fifth pair (the other tests count four):
#                          id 05 p521     EC P-521
#   ca.pem, ca.key       test CA (software key)
#   certs/<label>.pem    client certificate of each token key (clientAuth);
#                        issued from the public key read off the token, the
#                        token's private key is never used here
#   pub/<label>.pem      public key of each token key
#   server.pem, .key     software server cert: CN=localhost, DNS:localhost,
#                        IP:127.0.0.1, serverAuth
#   soft/<label>.{key,pem}  software client keys and certs of the same types,
#                        for comparisons
#
# Running it again on the same DIR starts over with a new token. Exits
# non-zero, with a message on stderr, if anything is missing or wrong.
set -euo pipefail
export LC_ALL=C

die() { echo "mktoken.sh: $*" >&2; exit 1; }

[ $# -eq 1 ] || die "usage: mktoken.sh DIR"
mkdir -p -- "$1"
D=$(cd -- "$1" && pwd)

TOKEN_LABEL=p11agent-test
KEYS="rsa2048 p256 p384 ed25519"
declare -A KEY_ID=([rsa2048]=01 [p256]=02 [p384]=03 [ed25519]=04 [p521]=05)
declare -A KEY_TYPE=([rsa2048]=rsa:2048 [p256]=EC:prime256v1
	[p384]=EC:secp384r1 [ed25519]=EC:edwards25519 [p521]=EC:secp521r1)
declare -A SOFT_ALG=([rsa2048]="-algorithm RSA -pkeyopt rsa_keygen_bits:2048"
	[p256]="-algorithm EC -pkeyopt ec_paramgen_curve:P-256"
	[p384]="-algorithm EC -pkeyopt ec_paramgen_curve:P-384"
	[ed25519]="-algorithm ED25519"
	[p521]="-algorithm EC -pkeyopt ec_paramgen_curve:P-521")
for k in ${P11AGENT_TEST_EXTRA_KEYS:-}; do
	[ -n "${KEY_ID[$k]:-}" ] && [[ " $KEYS " != *" $k "* ]] ||
		die "P11AGENT_TEST_EXTRA_KEYS: unknown or repeated key '$k' (known: p521)"
	KEYS="$KEYS $k"
done

for tool in softhsm2-util pkcs11-tool openssl xxd; do
	command -v "$tool" >/dev/null ||
		die "$tool not found (Debian: apt-get install softhsm2 opensc openssl xxd)"
done

# The SoftHSM module: $P11AGENT_TEST_MODULE if set, else the first that exists.
find_module() {
	local multiarch="" m
	if [ -n "${P11AGENT_TEST_MODULE:-}" ]; then
		[ -f "$P11AGENT_TEST_MODULE" ] ||
			die "P11AGENT_TEST_MODULE=$P11AGENT_TEST_MODULE does not exist"
		echo "$P11AGENT_TEST_MODULE"
		return
	fi
	multiarch=$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null ||
		gcc -print-multiarch 2>/dev/null || true)
	for m in /usr/lib/softhsm/libsofthsm2.so \
		${multiarch:+/usr/lib/$multiarch/softhsm/libsofthsm2.so} \
		${multiarch:+/usr/lib/$multiarch/pkcs11/libsofthsm2.so} \
		/usr/lib64/softhsm/libsofthsm2.so /usr/lib64/pkcs11/libsofthsm2.so \
		/usr/lib/pkcs11/libsofthsm2.so /usr/local/lib/softhsm/libsofthsm2.so; do
		if [ -f "$m" ]; then
			echo "$m"
			return
		fi
	done
	die "libsofthsm2.so not found (Debian: apt-get install softhsm2)"
}
MODULE=$(find_module)

umask 077
rm -rf -- "$D/tokens" "$D/certs" "$D/pub" "$D/soft" "$D/.work"
mkdir -p "$D/tokens" "$D/certs" "$D/pub" "$D/soft" "$D/.work"
W=$D/.work

cat >"$D/softhsm2.conf" <<EOF
# written by mktoken.sh
directories.tokendir = $D/tokens
objectstore.backend = file
log.level = ERROR
slots.removable = false
EOF
export SOFTHSM2_CONF=$D/softhsm2.conf

# Random PINs, one line, no newline.
PIN=$(openssl rand -hex 8)
SO_PIN=$(openssl rand -hex 8)
printf '%s' "$PIN" >"$D/pin"
printf '%s' "$SO_PIN" >"$D/so-pin"
chmod 0600 "$D/pin" "$D/so-pin"

# Output is kept in $W/log and shown only on failure.
run() {
	if ! "$@" >>"$W/log" 2>&1; then
		tail -n 20 "$W/log" >&2
		die "failed: $*"
	fi
}

run softhsm2-util --init-token --free --label "$TOKEN_LABEL" \
	--pin "$PIN" --so-pin "$SO_PIN"

P11=(pkcs11-tool --module "$MODULE" --token-label "$TOKEN_LABEL")

# Key pairs, generated on the token. pkcs11-tool's private key template
# already holds CKA_PRIVATE and CKA_SENSITIVE true; it sets
# CKA_EXTRACTABLE true only with --extractable, which we never pass.
for k in $KEYS; do
	run "${P11[@]}" --login --pin "$PIN" --keypairgen \
		--key-type "${KEY_TYPE[$k]}" --id "${KEY_ID[$k]}" --label "$k" \
		--usage-sign --sensitive
done

# Public keys, read from the token's public key objects. RSA: pkcs11-tool
# gives DER SPKI. EC and Ed25519: OpenSC 0.23 fails on P-384 and writes a
# malformed SPKI for Ed25519, so build the SPKI (RFC 5480, RFC 8410) from
# CKA_EC_POINT, a DER OCTET STRING holding the point.
run "${P11[@]}" --read-object --type pubkey --id "${KEY_ID[rsa2048]}" \
	-o "$W/rsa2048.pub.der"
run openssl pkey -pubin -inform DER -in "$W/rsa2048.pub.der" -out "$D/pub/rsa2048.pem"
"${P11[@]}" --list-objects --type pubkey >"$W/pubkeys.txt" 2>&1 ||
	die "cannot list public keys"
declare -A SPKI_RE=(
	[p256]='^0441(04[0-9a-f]{128})$'
	[p384]='^0461(04[0-9a-f]{192})$'
	[p521]='^048185(04[0-9a-f]{264})$'
	[ed25519]='^0420([0-9a-f]{64})$')
declare -A SPKI_PREFIX=(
	[p256]=3059301306072a8648ce3d020106082a8648ce3d030107034200
	[p384]=3076301006072a8648ce3d020106052b81040022036200
	[p521]=30819b301006072a8648ce3d020106052b8104002303818600
	[ed25519]=302a300506032b6570032100)
for k in $KEYS; do
	[ "$k" != rsa2048 ] || continue
	point=$(awk -v id="${KEY_ID[$k]}" '
		/^Public Key Object/ { pt = "" }
		/^ *EC_POINT:/ { pt = $2 }
		/^ *ID:/ && $2 == id && pt != "" { print pt; exit }' "$W/pubkeys.txt")
	[[ $point =~ ${SPKI_RE[$k]} ]] || die "unexpected CKA_EC_POINT of $k: '$point'"
	printf '%s' "${SPKI_PREFIX[$k]}${BASH_REMATCH[1]}" | xxd -r -p >"$W/$k.pub.der"
	run openssl pkey -pubin -inform DER -in "$W/$k.pub.der" -out "$D/pub/$k.pem"
done

cat >"$W/ext.cnf" <<'EOF'
[ca]
basicConstraints = critical, CA:true
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[client]
basicConstraints = critical, CA:false
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[server]
basicConstraints = critical, CA:false
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EOF

# Everything below uses only the default provider, whatever the caller's
# OPENSSL_CONF says.
export OPENSSL_CONF=/dev/null

serial() { echo "0x$(openssl rand -hex 8)"; }

# issue KEY SUBJECT EXT PUBKEY|"" OUT: a certificate signed by the CA for the
# CSR made with KEY; with PUBKEY, the certificate carries PUBKEY instead of
# KEY's public key (-force_pubkey), so KEY can be a throwaway.
issue() {
	local key=$1 subj=$2 ext=$3 pub=$4 out=$5
	run openssl req -new -key "$key" -subj "$subj" -out "$W/req.csr"
	run openssl x509 -req -in "$W/req.csr" -CA "$D/ca.pem" -CAkey "$D/ca.key" \
		-set_serial "$(serial)" -days 3650 -sha256 \
		-extfile "$W/ext.cnf" -extensions "$ext" \
		${pub:+-force_pubkey "$pub"} -out "$out"
}

run openssl req -x509 -new -newkey EC -pkeyopt ec_paramgen_curve:P-256 -nodes \
	-keyout "$D/ca.key" -subj "/O=p11agent tests/CN=p11agent test CA" \
	-days 3650 -sha256 -config "$W/ext.cnf" -extensions ca \
	-set_serial "$(serial)" -out "$D/ca.pem"

run openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$W/throwaway.key"
for k in $KEYS; do
	issue "$W/throwaway.key" "/O=p11agent tests/CN=$k" client "$D/pub/$k.pem" \
		"$D/certs/$k.pem"
	run openssl x509 -in "$D/certs/$k.pem" -outform DER -out "$W/$k.crt.der"
	run "${P11[@]}" --login --pin "$PIN" --write-object "$W/$k.crt.der" \
		--type cert --id "${KEY_ID[$k]}" --label "$k"
done

run openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$D/server.key"
issue "$D/server.key" "/O=p11agent tests/CN=localhost" server "" "$D/server.pem"

for k in $KEYS; do
	# shellcheck disable=SC2086 # SOFT_ALG holds several words on purpose
	run openssl genpkey ${SOFT_ALG[$k]} -out "$D/soft/$k.key"
	issue "$D/soft/$k.key" "/O=p11agent tests/CN=soft-$k" client "" "$D/soft/$k.pem"
done

# --- checks -------------------------------------------------------------
for c in "$D"/certs/*.pem "$D"/soft/*.pem "$D/server.pem"; do
	run openssl verify -CAfile "$D/ca.pem" "$c"
done
for k in $KEYS; do
	openssl x509 -in "$D/certs/$k.pem" -noout -pubkey >"$W/$k.certpub.pem"
	cmp -s "$W/$k.certpub.pem" "$D/pub/$k.pem" ||
		die "certificate of $k does not carry the token's public key"
done

# Without login: public keys and certificates only (private keys are
# CKA_PRIVATE). With login: the four (or five) private keys, all sensitive and never
# extractable.
"${P11[@]}" --list-objects >"$W/public.txt" 2>&1 || die "cannot list objects"
"${P11[@]}" --login --pin "$PIN" --list-objects >"$W/all.txt" 2>&1 ||
	die "cannot list objects after login"
! grep -q '^Private Key Object' "$W/public.txt" ||
	die "private keys are visible without login (CKA_PRIVATE false)"
for k in $KEYS; do
	access=$(awk -v label="$k" '
		/^[A-Z]/ { priv = /^Private Key Object/; l = "" }
		priv && /^ *label:/ { l = $2 }
		priv && l == label && /^ *Access:/ { sub(/^ *Access: */, ""); print; exit }
		' "$W/all.txt")
	[ -n "$access" ] || die "private key $k not on the token"
	[[ ", $access," == *", sensitive,"* ]] || die "private key $k is not sensitive: $access"
	[[ ", $access," == *", never extractable,"* ]] ||
		die "private key $k is or was extractable: $access"
	[[ ", $access," != *", extractable,"* ]] || die "private key $k is extractable: $access"
	grep -A3 '^Certificate Object' "$W/public.txt" | grep -q "label: *$k\$" ||
		die "certificate $k not on the token"
done
n=$(grep -c '^Private Key Object' "$W/all.txt" || true)
want=$(wc -w <<<"$KEYS")
[ "$n" -eq "$want" ] || die "expected $want private keys on the token, found $n"

# -- env ----------------------------------------------------------------
{
	echo "# written by mktoken.sh; use: set -a; . $D/env; set +a"
	printf 'SOFTHSM2_CONF=%q\n' "$D/softhsm2.conf"
	printf 'P11AGENT_TEST_MODULE=%q\n' "$MODULE"
	printf 'P11AGENT_TEST_DIR=%q\n' "$D"
	printf 'P11AGENT_TEST_TOKEN=%q\n' "$TOKEN_LABEL"
	printf 'P11AGENT_TEST_PIN_FILE=%q\n' "$D/pin"
	printf 'P11AGENT_TEST_SO_PIN_FILE=%q\n' "$D/so-pin"
	printf 'P11AGENT_TEST_CA=%q\n' "$D/ca.pem"
	echo "P11AGENT_TEST_KEYS=\"$KEYS\""
} >"$D/env"

chmod 0644 "$D/env" "$D/softhsm2.conf" "$D/ca.pem" "$D/server.pem" \
	"$D"/certs/*.pem "$D"/pub/*.pem "$D"/soft/*.pem
chmod 0755 "$D/certs" "$D/pub"
rm -rf -- "$W"
