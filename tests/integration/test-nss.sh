#!/bin/bash
# NSS with token keys through p11agent-pkcs11.so: a fresh NSS database
# (certutil -N), the module added with modutil, the test CA trusted, and
# tstclnt -n TOKEN:LABEL (NSS's nickname of a certificate on a token is the
# token label, a colon, the certificate's CKA_LABEL) against openssl
# s_server -www -Verify 1 -verify_return_error. A case passes when the
# server accepted the token key's certificate and the agent signed.
#
# NSS 3.87 (Debian 12) does client authentication with RSA (PSS in TLS
# 1.3 and, offered by s_server, in TLS 1.2) and ECDSA keys, not Ed25519:
# tstclnt -n p11agent-test:ed25519 sends no certificate (the server ends
# with certificate_required); certutil -K shows the key with type "null".
# So no ed25519 handshakes here; certutil still lists its certificate.
. "$(dirname "$0")/lib-module.sh"

prog_require certutil modutil tstclnt pk12util
mod_setup
NSS_KEYS="rsa2048 p256 p384"
NSSDB=$T/nssdb

nss_setup() {
	mkdir -p "$NSSDB"
	with_timeout "$IT_TIMEOUT" certutil -N -d "sql:$NSSDB" --empty-password || return 1
	with_timeout "$IT_TIMEOUT" modutil -dbdir "sql:$NSSDB" -add p11agent -libfile "$P11MOD" \
		-force || return 1
	with_timeout "$IT_TIMEOUT" certutil -A -d "sql:$NSSDB" -n "p11agent test CA" -t CT,C,C \
		-i "$T/ca.pem" || return 1
	with_timeout "$IT_TIMEOUT" modutil -dbdir "sql:$NSSDB" -list p11agent
}
nss_setup >"$T/nss-setup.log" 2>&1 || { tap_diag <"$T/nss-setup.log"; tap_bail "NSS database setup failed"; }

# The module's token and every key's certificate are in NSS's view, by
# the nicknames tstclnt takes, and NSS finds each certificate's private
# key on the token (certutil -K lists keys by the certificate they pair).
nss_lists() {
	local k ok=0
	with_timeout "$IT_TIMEOUT" certutil -L -d "sql:$NSSDB" -h all >"$T/nss-certs" || return 1
	with_timeout "$IT_TIMEOUT" certutil -K -d "sql:$NSSDB" -h "$P11AGENT_TEST_TOKEN" \
		</dev/null >"$T/nss-keys" 2>&1 || { cat "$T/nss-keys"; return 1; }
	cat "$T/nss-certs" "$T/nss-keys"
	for k in $IT_KEYS; do
		grep -q "^$P11AGENT_TEST_TOKEN:$k " "$T/nss-certs" ||
			{ echo "no certificate $P11AGENT_TEST_TOKEN:$k" >&2; ok=1; }
		grep -Eq "^<[ 0-9]+> +[a-z]+ +[0-9a-f]+ +$k\$" "$T/nss-keys" ||
			{ echo "no private key paired with $P11AGENT_TEST_TOKEN:$k" >&2; ok=1; }
	done
	return "$ok"
}
tap_case "certutil -L/-K: the token's certificates by TOKEN:LABEL, each with its private key" nss_lists

# tst DIR PORT NICKNAME PROTO [DB]: tstclnt's request for the server's
# page. tstclnt -A FILE sends FILE and exits when the server closes (with
# its stdin instead it never exits: it keeps polling a closed stdin).
tst() {
	local dir=$1 port=$2 nick=$3 v=$4 db=${5:-$NSSDB} rc=0
	printf 'GET / HTTP/1.0\r\n\r\n' >"$dir/request"
	with_timeout "$IT_TIMEOUT" tstclnt -h 127.0.0.1 -a localhost -p "$port" -d "sql:$db" \
		-n "$nick" -V "$v:$v" -A "$dir/request" </dev/null >"$dir/client.out" 2>"$dir/client.err" || rc=$?
	sed -n '/^HTTP\/1.0 200 ok/,$p' "$dir/client.out" >"$dir/page"
	[ "$rc" -eq 0 ] || cat "$dir/client.err" >&2
	return "$rc"
}

# harness: a software client key imported into a database of its own
soft_db() {
	mkdir -p "$T/softdb"
	certutil -N -d "sql:$T/softdb" --empty-password &&
		certutil -A -d "sql:$T/softdb" -n "p11agent test CA" -t CT,C,C -i "$T/ca.pem" &&
		plain pkcs12 -export -in "$T/soft/p256.pem" -inkey "$T/soft/p256.key" \
			-name soft-p256 -passout pass: -out "$T/softdb/p256.p12" &&
		pk12util -d "sql:$T/softdb" -i "$T/softdb/p256.p12" -W ''
}
soft_db >"$T/softdb.log" 2>&1 || { tap_diag <"$T/softdb.log"; tap_bail "software NSS database failed"; }
tap_case "harness: tstclnt, software p256 key in the NSS database, TLS 1.3" \
	client_case tls1_3 soft-p256 tst soft-p256 tls1.3 "$T/softdb"

for k in $NSS_KEYS; do
	for proto in tls1_3 tls1_2; do
		tap_case "$k $(proto_name "$proto") tstclnt -n TOKEN:LABEL (modutil -add)" \
			client_case "$proto" "$k" tst "$P11AGENT_TEST_TOKEN:$k" "${proto/tls1_/tls1.}"
	done
done

tap_done
