#!/bin/bash
# Keys in a TPM (issue 13): a software TPM (swtpm, tpm2-abrmd, tpm2-pkcs11:
# lib-tpm.sh) as the agent's second token beside SoftHSM. TLS handshakes
# with the TPM's P-256 and RSA-2048 keys as a client and as a server, TLS
# 1.2 and 1.3, by URI and by key-reference file (a canonical one, without
# the NUL padding of the TPM's model, and an old one with %00), and nginx
# holding a TPM server key.
. "$(dirname "$0")/lib-prog.sh"
. "$(dirname "$0")/lib-tpm.sh"

prog_require nginx python3
it_setup
tpm_setup
IT_AGENT_ARGS=(--module "$TPM_MODULE")
agent_start "$T/pin" || tap_bail "p11agentd did not start"
prog_env
mkdir -p "$T/refs" && chmod 0700 "$T/refs"

# The TPM's model is "SW   TPM" padded with NULs: the canonical URIs
# trim the padding (model=SW%20%20%20TPM;), both keys are listed.
keys_listed() {
	local out k
	out=$(with_timeout 30 "$P11AGENTCTL" --socket "$SOCK" keys) || return 1
	echo "$out"
	for k in $TPM_KEYS; do
		grep -q "^pkcs11:model=SW%20%20%20TPM;.*;token=$TPM_TOKEN;.*object=$k;type=private\$" \
			<<<"$out" || { echo "TPM key $k not listed with a trimmed model" >&2; return 1; }
	done
	grep -q "object=p384;type=private" <<<"$out" ||
		{ echo "SoftHSM's keys are missing" >&2; return 1; }
	! grep -q '%00' <<<"$out" || { echo "a URI carries %00" >&2; return 1; }
}
tap_case "the agent lists the TPM's keys (beside SoftHSM's); canonical URIs carry no %00" \
	keys_listed

# tpm_client_case PROTO KEY KEYARG: KEY's certificate and KEYARG (URI or
# reference file) for openssl s_client against s_server -Verify 1.
tpm_client_case() {
	local proto=$1 k=$2 keyarg=$3 dir
	dir=$T/client-$k-$proto-$RANDOM
	sig_mark || return 1
	mtls "$dir" "$keyarg" "$TPM_DIR/certs/$k.pem" "$proto" ||
		{ echo "s_client failed" >&2; tail -n 20 "$dir/client.err" >&2; return 1; }
	mtls_accepted "$dir" "$k" "$(proto_name "$proto")" "$(sigtype_of "$k")" || return 1
	sig_signed 1
}
for k in $TPM_KEYS; do
	for proto in tls1_3 tls1_2; do
		tap_case "client: TPM $k $(proto_name "$proto") s_client -key URI" \
			tpm_client_case "$proto" "$k" "$(tpm_uri "$k")"
	done
done

# A key-reference file written by p11agentctl ref holds the canonical URI.
ref_tpm() {
	local k=$1 f=$T/refs/$1.pem
	with_timeout 30 "$P11AGENTCTL" --socket "$SOCK" ref "$(tpm_uri "$k")" -o "$f" || return 1
	sed '/^-----/d' "$f" | base64 -d >"$T/refs/$k.der" || return 1
	grep -aq 'model=SW%20%20%20TPM;' "$T/refs/$k.der" ||
		{ echo "reference file of $k lacks the trimmed model" >&2; return 1; }
	! grep -aq '%00' "$T/refs/$k.der" || { echo "reference file of $k carries %00" >&2; return 1; }
}
for k in $TPM_KEYS; do
	tap_case "p11agentctl ref: $k's key-reference file holds the canonical URI (no %00)" ref_tpm "$k"
	tap_case "client: TPM $k TLS 1.3 s_client -key reference file" \
		tpm_client_case tls1_3 "$k" "$T/refs/$k.pem"
done

# Reference files written before the trim hold the model with its NULs
# (percent-encoded): they still select the key.
old_ref() {
	local k=$1 f=$T/refs/$1-old.pem uri
	uri="pkcs11:model=SW%20%20%20TPM%00%00%00%00%00%00%00%00;token=$TPM_TOKEN;object=$k;type=private"
	python3 "$IT_LIB_DIR/mkref.py" p11agent "$uri" "$2" >"$f" || return 1
	chmod 0600 "$f"
	tpm_client_case tls1_2 "$k" "$f"
}
tap_case "client: an old reference file (model=SW%20%20%20TPM%00%00...) still selects TPM p256" \
	old_ref p256 EC

# tpm_srv PROTO KEY: openssl s_server holding TPM key KEY (URI); a client
# with a software key checks the server's certificate and signature.
tpm_srv() {
	local proto=$1 k=$2 dir port
	dir=$T/s_server-$k-$proto-$RANDOM
	mkdir -p "$dir"
	sig_mark || return 1
	port=$(free_port)
	bg "s_server-$k-$proto" "${PROG_ENV[@]}" openssl s_server \
		-accept "127.0.0.1:$port" -naccept 1 -www "-$proto" \
		-cert "$TPM_DIR/certs/$k.pem" -key "$(tpm_uri "$k")" \
		-CAfile "$T/ca.pem" -Verify 1 -verify_return_error
	wait_listen "$port" "$BG_PID" || { cat "$T/s_server-$k-$proto.log" >&2; return 1; }
	soft_get "$dir" "$port" "$proto" "$k" || { cat "$T/s_server-$k-$proto.log" >&2; return 1; }
	stop_checked "$BG_PID" s_server || return 1
	grep -q 'Verify return code: 0 (ok)' "$dir/reply" ||
		{ echo "server page shows no verified client certificate" >&2; return 1; }
	sig_signed 1
}
for k in $TPM_KEYS; do
	for proto in tls1_3 tls1_2; do
		tap_case "server: TPM $k $(proto_name "$proto") s_server -key URI" tpm_srv "$proto" "$k"
	done
done

# nginx (master loads the key, 2 workers sign) with the TPM's P-256 key
# as its server key, given as a key-reference file.
NGINX_WORKERS=2
nginx_tpm() {
	local k=$1 proto line rc=0
	sig_mark || return 1
	nginx_start "$TPM_DIR/certs/$k.pem" "$T/refs/$k.pem" || return 1
	for proto in tls1_3 tls1_2; do
		soft_get "$T/nginx-$k-$proto" "$NGINX_PORT" "$proto" "$k" || { rc=1; break; }
		line=$(grep '^nginx ' "$T/nginx-$k-$proto/reply")
		[[ $line == *"verify=SUCCESS dn=CN=soft-p256,O=p11agent tests proto=$(proto_name "$proto")"* ]] ||
			{ echo "nginx reply: $line" >&2; rc=1; break; }
	done
	nginx_stop || rc=1
	[ "$rc" -eq 0 ] && sig_signed 2
}
for k in $TPM_KEYS; do
	tap_case "nginx: TPM $k server key (reference file), TLS 1.3 and 1.2" nginx_tpm "$k"
done

# the agent first (it uses the TPM), then the fixture, checked
agent_stop >/dev/null 2>&1
tpm_stop
tap_done
