#!/bin/bash
# openssl s_server with a token RSA key answers as it does with the same
# key type in a file (issue 12, server keys):
#  - TLS_RSA_* key exchange (AES128-SHA, TLS 1.2): the premaster secret is
#    decrypted by the agent when the key's [key] section says decrypt = yes
#    (counted and audited as a decryption); with decrypt = no the
#    handshake fails cleanly and the agent's log names the key and the
#    setting;
#  - a flawed premaster (Bleichenbacher/ROBOT probes: wrong block type, no
#    zero, zero in the padding, wrong version, 47 or 49 bytes) gets the same
#    answer as from a software key: bad_record_mac at Finished, never an
#    earlier, distinct alert; a correct one is accepted;
#  - TLS 1.0 and 1.1 with ECDHE-RSA: the ServerKeyExchange is signed over
#    MD5-SHA1 (raw PKCS#1 v1.5 by the agent);
#  - decryption over the signing channel (DECRYPT frames): a server's
#    handshakes after its first decrypt there (the first goes over D-Bus
#    Decrypt), counted and audited; raw, PKCS#1 and OAEP; a key with
#    decrypt = no is refused on the channel with the D-Bus Decrypt's error
#    and the same audit record; hostile DECRYPT frames; P11AGENT_CHANNEL=0
#    keeps D-Bus; the ROBOT probes below run mostly over the channel.
# The token key "rsakex" is made here with CKA_DECRYPT (mktoken's keys only
# sign).
. "$(dirname "$0")/lib-prog.sh"

it_setup
RSAKEX_PY=$IT_LIB_DIR/rsakex.py
PIN=$(cat "$T/pin")
P11=(pkcs11-tool --module "$MODULE" --token-label "$P11AGENT_TEST_TOKEN")
"${P11[@]}" --login --pin "$PIN" --keypairgen --key-type rsa:2048 --id 0a --label rsakex \
	--usage-sign --usage-decrypt --sensitive >"$T/keygen.log" 2>&1 ||
	{ tap_diag <"$T/keygen.log"; tap_bail "cannot make the rsakex key"; }
"${P11[@]}" --read-object --type pubkey --id 0a -o "$T/rsakex.der" >>"$T/keygen.log" 2>&1 ||
	tap_bail "cannot read the rsakex public key"
plain pkey -pubin -inform DER -in "$T/rsakex.der" -out "$T/rsakex.pub" ||
	tap_bail "rsakex public key"

# certificates: the token key and a software RSA key, CN=rsakex / soft-rsa
cat >"$T/srv.ext" <<'EOF'
[srv]
basicConstraints = critical, CA:false
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
EOF
plain genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$T/soft-rsa.key" ||
	tap_bail "genpkey"
plain pkey -in "$T/soft-rsa.key" -pubout -out "$T/soft-rsa.pub" || tap_bail "pkey"
for k in rsakex soft-rsa; do
	plain req -new -key "$T/soft-rsa.key" -subj "/O=p11agent tests/CN=$k" -out "$T/$k.csr" &&
		plain x509 -req -in "$T/$k.csr" -CA "$T/ca.pem" -CAkey "$T/ca.key" \
			-set_serial "0x$(openssl rand -hex 8)" -days 30 -sha256 \
			-extfile "$T/srv.ext" -extensions srv -force_pubkey "$T/$k.pub" \
			-out "$T/$k.pem" 2>"$T/$k.x509.err" || tap_bail "certificate for $k"
done

AGENT_CONF=$T/agent.conf
AUDIT=$T/audit.log
# conf yes|no [LINE]: agent.conf with decrypt = $1 for rsakex, and LINE in
# its section (written whole)
conf() {
	cat >"$AGENT_CONF.new" <<EOF
[agent]
audit-file = $AUDIT
[key pkcs11:object=rsakex]
decrypt = $1
${2:-}
EOF
	chmod 0600 "$AGENT_CONF.new"
	mv "$AGENT_CONF.new" "$AGENT_CONF"
}
conf yes
# the fake pinentry answers confirm = yes prompts (allow, unless the file says no)
export FAKE_PINENTRY_LOG=$T/pinentry.log FAKE_PINENTRY_CONFIRM=$T/confirm.answer
echo yes >"$FAKE_PINENTRY_CONFIRM"
IT_AGENT_ARGS=(--config "$AGENT_CONF" --pinentry "$IT_LIB_DIR/fake-pinentry.sh")
# the agent logs each channel frame (P11AGENT_DEBUG=bus)
export P11AGENT_DEBUG=bus
agent_start "$T/pin" || tap_bail "p11agentd did not start"
prog_env

# decryptions: N from "decryptions: N" of p11agentctl status
decryptions() {
	with_timeout 10 "$P11AGENTCTL" --socket "$SOCK" status |
		sed -n 's/^decryptions:[[:space:]]*\([0-9][0-9]*\)$/\1/p'
}

# server NAME KEYARG CERT CONNECTIONS [ARGS...]: s_server (the provider
# loaded) on a free port for CONNECTIONS connections; sets PORT
server() {
	local name=$1 keyarg=$2 cert=$3 n=$4
	shift 4
	PORT=$(free_port)
	bg "$name" "${PROG_ENV[@]}" openssl s_server -accept "127.0.0.1:$PORT" -naccept "$n" -www \
		-cert "$cert" -key "$keyarg" "$@"
	wait_listen "$PORT" "$BG_PID" || { cat "$T/$name.log" >&2; return 1; }
}

# connect NAME ARGS...: a software-only s_client that sends a line and
# quits; its output in $T/NAME.out. Status of s_client.
connect() {
	local name=$1
	shift
	echo hello | plain s_client -connect "127.0.0.1:$PORT" -servername localhost \
		-CAfile "$T/ca.pem" -verify_return_error "$@" >"$T/$name.out" 2>&1
}

# rsakex_ok KEYARG CERT NAME: a TLS 1.2 AES128-SHA handshake completes
rsakex_ok() {
	local keyarg=$1 cert=$2 name=$3
	server "srv-$name" "$keyarg" "$cert" 1 -tls1_2 || return 1
	if ! connect "$name" -tls1_2 -cipher AES128-SHA; then
		cat "$T/$name.out" "$T/srv-$name.log" >&2
		return 1
	fi
	stop_checked "$BG_PID" s_server || return 1
	grep -Eq '^ *Cipher *: AES128-SHA$' "$T/$name.out" &&
		grep -q 'Verify return code: 0 (ok)' "$T/$name.out" ||
		{ cat "$T/$name.out" >&2; echo "no verified AES128-SHA session" >&2; return 1; }
}

case_soft() {
	rsakex_ok "$T/soft-rsa.key" "$T/soft-rsa.pem" soft
}
tap_case "harness: software RSA server key, TLS 1.2 AES128-SHA (RSA key exchange)" case_soft

case_token() {
	local before after
	before=$(decryptions) || return 1
	rsakex_ok "$(uri rsakex)" "$T/rsakex.pem" token || return 1
	after=$(decryptions) || return 1
	echo "decryptions: $before -> $after"
	[ "$after" -ge $((before + 1)) ] || { echo "the agent counted no decryption" >&2; return 1; }
	grep -q 'event=decrypt key="[^"]*object=rsakex[^"]*" mechanism=rsa-raw .*result="ok"' \
		"$AUDIT" || { cat "$AUDIT" >&2; echo "no audit record of the decryption" >&2; return 1; }
}
tap_case "token RSA key, decrypt = yes: TLS 1.2 AES128-SHA handshake; a decryption counted and audited" \
	case_token

case_denied() {
	local rc=0 st=0
	conf no && agent_hup || return 1
	server srv-denied "$(uri rsakex)" "$T/rsakex.pem" 1 -tls1_2 || return 1
	connect denied -tls1_2 -cipher AES128-SHA || rc=$?
	stop_checked "$BG_PID" s_server 0 1 143 || st=1
	conf yes && agent_hup || return 1
	[ "$st" -eq 0 ] || return 1
	[ "$rc" -ne 0 ] || { cat "$T/denied.out" >&2; echo "the handshake succeeded" >&2; return 1; }
	grep -q 'alert decrypt error' "$T/denied.out" ||
		{ cat "$T/denied.out" >&2; echo "the client saw no decrypt_error alert" >&2; return 1; }
	grep -q "denied key '[^']*object=rsakex[^']*' .*(decrypt): decryption with key .* is off: .*'decrypt = yes'" \
		"$T/agent.log" || { echo "no agent log line naming the key and decrypt = yes" >&2; return 1; }
	grep -q "decrypting with .*object=rsakex.*decrypt = yes" "$T/srv-denied.log" ||
		{ cat "$T/srv-denied.log" >&2; echo "s_server's error does not say why" >&2; return 1; }
}
tap_case "token RSA key, decrypt = no: the handshake fails with decrypt_error; the agent's log names key and setting" \
	case_denied

# confirm = yes applies to decryptions as to signatures: the person is
# asked (the prompt says "decrypt"), a Deny refuses the decryption
case_confirm() {
	local rc=0
	echo secret >"$T/msg"
	plain pkeyutl -encrypt -pubin -inkey "$T/rsakex.pub" -in "$T/msg" -out "$T/msg.enc" ||
		return 1
	conf yes "confirm = yes" && agent_hup || return 1
	: >"$FAKE_PINENTRY_LOG"
	echo yes >"$FAKE_PINENTRY_CONFIRM"
	client pkeyutl -decrypt -inkey "$(uri rsakex)" -in "$T/msg.enc" -out "$T/msg.dec" ||
		rc=1
	echo no >"$FAKE_PINENTRY_CONFIRM"
	if [ "$rc" -eq 0 ] && client pkeyutl -decrypt -inkey "$(uri rsakex)" -in "$T/msg.enc" \
		-out "$T/msg.dec2" 2>"$T/denied-confirm.err"; then
		echo "decrypted though the person pressed Deny" >&2
		rc=1
	fi
	echo yes >"$FAKE_PINENTRY_CONFIRM"
	conf yes && agent_hup || return 1
	[ "$rc" -eq 0 ] || return 1
	cmp "$T/msg" "$T/msg.dec" || { echo "the plaintext differs" >&2; return 1; }
	grep -q "^SETDESC Allow openssl (pid [0-9]*, uid $(id -u)) to decrypt with key \"rsakex\"" \
		"$FAKE_PINENTRY_LOG" || { cat "$FAKE_PINENTRY_LOG" >&2; echo "no decrypt prompt" >&2; return 1; }
	grep -q "only when the person confirms it: the person denied it" "$T/denied-confirm.err" ||
		{ cat "$T/denied-confirm.err" >&2; return 1; }
}
tap_case "confirm = yes: a decryption waits for the person (the prompt says decrypt); Deny refuses it" \
	case_confirm

# --- decryption over the signing channel --------------------------------
CHANRAW=$IT_LIB_DIR/chanraw.py
RAWCALL=$IT_LIB_DIR/rawcall.py
decrypt_frames() { grep -c 'signing channel of uid [0-9]* pid [0-9]*: DECRYPT' "$T/agent.log"; }
decrypt_failures() {
	with_timeout 10 "$P11AGENTCTL" --socket "$SOCK" status |
		sed -n 's/^decrypt-failures:[[:space:]]*\([0-9][0-9]*\)$/\1/p'
}
# decryptions the audit records account for (a summary says count=N)
audit_ok_decs() {
	grep 'event=decrypt .*object=rsakex.*result="ok"' "$AUDIT" |
		awk '{ n = 1; for (i = 1; i <= NF; i++) if ($i ~ /^count=[0-9]+$/) n = substr($i, 7); s += n } END { print s + 0 }'
}
# an audit record without what differs between two uses (time, pid, duration)
audit_shape() { sed -E 's/^time=[^ ]* //; s/ pid=[0-9]+ / /; s/ duration_us=[0-9]+//'; }

# handshakes N NAME [ENV...]: one s_server, N TLS 1.2 AES128-SHA handshakes
handshakes() {
	local n=$1 name=$2 i
	shift 2
	PORT=$(free_port)
	bg "srv-$name" "${PROG_ENV[@]}" "$@" openssl s_server -accept "127.0.0.1:$PORT" \
		-naccept "$n" -www -cert "$T/rsakex.pem" -key "$(uri rsakex)" -tls1_2
	wait_listen "$PORT" "$BG_PID" || { cat "$T/srv-$name.log" >&2; return 1; }
	for ((i = 1; i <= n; i++)); do
		connect "$name-$i" -tls1_2 -cipher AES128-SHA &&
			grep -Eq '^ *Cipher *: AES128-SHA$' "$T/$name-$i.out" ||
			{ cat "$T/$name-$i.out" "$T/srv-$name.log" >&2; return 1; }
	done
	stop_checked "$BG_PID" s_server
}

case_channel_handshakes() {
	local f0 d0 a0 f1 d1 a1
	f0=$(decrypt_frames) a0=$(audit_ok_decs) d0=$(decryptions) || return 1
	handshakes 3 chan || return 1
	f1=$(decrypt_frames) a1=$(audit_ok_decs) d1=$(decryptions) || return 1
	echo "DECRYPT frames $f0 -> $f1, decryptions $d0 -> $d1, audited $a0 -> $a1"
	[ "$f1" -eq $((f0 + 2)) ] || { echo "not two DECRYPT frames for 3 handshakes" >&2; return 1; }
	[ "$d1" -eq $((d0 + 3)) ] || { echo "not three decryptions counted" >&2; return 1; }
	[ "$a1" -eq $((a0 + 3)) ] || { echo "the audit does not account for three decryptions" >&2; return 1; }
}
tap_case "s_server, 3 RSA key exchanges: the 1st over D-Bus Decrypt, then 2 DECRYPT frames; counted and audited" \
	case_channel_handshakes

case_channel_dbus_forced() {
	local f0 d0 f1 d1
	f0=$(decrypt_frames) d0=$(decryptions) || return 1
	handshakes 2 nochan P11AGENT_CHANNEL=0 || return 1
	f1=$(decrypt_frames) d1=$(decryptions) || return 1
	echo "DECRYPT frames $f0 -> $f1, decryptions $d0 -> $d1"
	[ "$f1" -eq "$f0" ] || { echo "a DECRYPT frame with P11AGENT_CHANNEL=0" >&2; return 1; }
	[ "$d1" -eq $((d0 + 2)) ] || { echo "the D-Bus decryptions were not counted" >&2; return 1; }
}
tap_case "P11AGENT_CHANNEL=0: RSA key exchanges over D-Bus Decrypt, no DECRYPT frame" \
	case_channel_dbus_forced

printf 'a premaster stand-in' >"$T/chan.msg"
plain pkeyutl -encrypt -pubin -inkey "$T/rsakex.pub" -in "$T/chan.msg" -out "$T/chan.pkcs1" &&
	plain pkeyutl -encrypt -pubin -inkey "$T/rsakex.pub" -in "$T/chan.msg" -out "$T/chan.oaep" \
		-pkeyopt rsa_padding_mode:oaep ||
	tap_bail "cannot encrypt to the rsakex key"
CHAN_MSG_HEX=$(xxd -p -c 4096 "$T/chan.msg")

case_channel_paddings() {
	local out f0
	f0=$(decrypt_frames)
	out=$(with_timeout "$IT_TIMEOUT" python3 "$CHANRAW" decrypt "$SOCK" "$(uri rsakex)" 1 \
		"$(xxd -p -c 4096 "$T/chan.pkcs1")") && [ "$out" = "$CHAN_MSG_HEX" ] ||
		{ echo "rsa-pkcs1: $out" >&2; return 1; }
	out=$(with_timeout "$IT_TIMEOUT" python3 "$CHANRAW" decrypt "$SOCK" "$(uri rsakex)" 2 \
		"$(xxd -p -c 4096 "$T/chan.oaep")" 1 1 "") && [ "$out" = "$CHAN_MSG_HEX" ] ||
		{ echo "rsa-oaep/sha1: $out" >&2; return 1; }
	# raw: the whole PKCS#1 block, the message at its end
	out=$(with_timeout "$IT_TIMEOUT" python3 "$CHANRAW" decrypt "$SOCK" "$(uri rsakex)" 3 \
		"$(xxd -p -c 4096 "$T/chan.pkcs1")") && [ "${#out}" -eq 512 ] &&
		[ "${out:0:4}" = 0002 ] && [ "${out%"$CHAN_MSG_HEX"}" != "$out" ] ||
		{ echo "rsa-raw: $out" >&2; return 1; }
	[ "$(decrypt_frames)" -eq $((f0 + 3)) ] || { echo "not three DECRYPT frames" >&2; return 1; }
}
tap_case "raw channel client: DECRYPT with rsa-pkcs1, rsa-oaep (sha1) and rsa-raw give the plaintext" \
	case_channel_paddings

case_channel_denied() {
	local rc=0 ct dbus chan x0 x1 recs
	ct=$(xxd -p -c 4096 "$T/chan.pkcs1")
	conf no && agent_hup || return 1
	x0=$(decrypt_failures) || rc=1
	dbus=$(with_timeout "$IT_TIMEOUT" python3 "$RAWCALL" "$SOCK" Decrypt "s:$(uri rsakex)" \
		s:rsa-pkcs1 'asv:{}' "ay:$ct") || rc=1
	chan=$(with_timeout "$IT_TIMEOUT" python3 "$CHANRAW" decrypt "$SOCK" "$(uri rsakex)" 1 "$ct")
	x1=$(decrypt_failures) || rc=1
	recs=$(grep 'event=decrypt .*object=rsakex.*result="denied"' "$AUDIT" | tail -n 2 | audit_shape)
	conf yes && agent_hup || return 1
	[ "$rc" -eq 0 ] || return 1
	printf 'D-Bus:\n%s\nchannel:\n%s\naudit:\n%s\n' "$dbus" "$chan" "$recs"
	[ "$(head -n 1 <<<"$dbus" | cut -d' ' -f1,2)" = "error org.p11agent.Error.Denied" ] ||
		{ echo "D-Bus Decrypt was not denied" >&2; return 1; }
	[ "$(head -n 1 <<<"$chan")" = "decrypt failed: status -7" ] ||
		{ echo "the channel's DECRYPT was not denied (-7)" >&2; return 1; }
	[ "$(sed -n 2p <<<"$dbus")" = "$(sed -n 2p <<<"$chan")" ] ||
		{ echo "the channel's error text differs from D-Bus Decrypt's" >&2; return 1; }
	grep -q "decrypt = yes" <<<"$chan" || { echo "the refusal does not name the setting" >&2; return 1; }
	[ "$x1" -eq $((x0 + 2)) ] || { echo "decrypt-failures $x0 -> $x1, not +2" >&2; return 1; }
	[ "$(wc -l <<<"$recs")" -eq 2 ] && [ "$(sort -u <<<"$recs" | wc -l)" -eq 1 ] ||
		{ echo "not two identical audit records of the denial" >&2; return 1; }
}
tap_case "decrypt = no: the channel's DECRYPT is refused with D-Bus Decrypt's error (Denied, same text), counted, the same audit record" \
	case_channel_denied

case_channel_audit_same() {
	local ct recs
	ct=$(xxd -p -c 4096 "$T/chan.pkcs1")
	with_timeout "$IT_TIMEOUT" python3 "$RAWCALL" "$SOCK" Decrypt "s:$(uri rsakex)" s:rsa-raw \
		'asv:{}' "ay:$ct" | grep -q '^return ay$' || { echo "D-Bus Decrypt failed" >&2; return 1; }
	with_timeout "$IT_TIMEOUT" python3 "$CHANRAW" decrypt "$SOCK" "$(uri rsakex)" 3 "$ct" \
		>/dev/null || { echo "the channel's DECRYPT failed" >&2; return 1; }
	recs=$(grep 'event=decrypt .*object=rsakex.*result="ok"' "$AUDIT" | tail -n 2 | audit_shape)
	echo "$recs"
	[ "$(wc -l <<<"$recs")" -eq 2 ] && [ "$(sort -u <<<"$recs" | wc -l)" -eq 1 ] &&
		grep -q 'mechanism=rsa-raw ' <<<"$recs" ||
		{ echo "the audit records of D-Bus Decrypt and DECRYPT differ" >&2; return 1; }
}
tap_case "a decryption over D-Bus and one over the channel leave the same audit record" \
	case_channel_audit_same

case_channel_hostile() {
	with_timeout 120 python3 "$CHANRAW" hostile-decrypt "$SOCK" "$(uri rsakex)" \
		"$(xxd -p -c 4096 "$T/chan.pkcs1")" "$CHAN_MSG_HEX"
}
tap_case "hostile DECRYPT frames (padding, hash indexes, label and ciphertext lengths) are refused as D-Bus refuses them, or close the channel" \
	case_channel_hostile

# probes NAME KEYARG CERT: each ROBOT probe against a fresh s_server
# holding the key; the answers in $T/probes-NAME.txt
KINDS="good bad-type no-zero zero-in-pad bad-version short long"
probes() {
	local name=$1 keyarg=$2 cert=$3 kind n
	n=$(wc -w <<<"$KINDS")
	server "srv-probe-$name" "$keyarg" "$cert" "$n" -tls1_2 -cipher AES128-SHA || return 1
	: >"$T/probes-$name.txt"
	for kind in $KINDS; do
		echo "$kind: $(with_timeout 30 python3 "$RSAKEX_PY" 127.0.0.1 "$PORT" "$cert" "$kind" 2>&1)" \
			>>"$T/probes-$name.txt"
	done
	# the flawed probes end in failed handshakes: s_server may end with 1
	stop_checked "$BG_PID" s_server 0 1 143 || return 1
	cat "$T/probes-$name.txt"
}
expected_probes() {
	local kind
	for kind in $KINDS; do
		if [ "$kind" = good ]; then echo "good: accepted"; else echo "$kind: alert 20"; fi
	done
}

case_probes_soft() {
	probes soft "$T/soft-rsa.key" "$T/soft-rsa.pem" || return 1
	diff <(expected_probes) "$T/probes-soft.txt"
}
tap_case "harness: ROBOT probes against a software key: good accepted, every flaw bad_record_mac" \
	case_probes_soft

case_probes_token() {
	local f0
	f0=$(decrypt_frames)
	probes token "$(uri rsakex)" "$T/rsakex.pem" || return 1
	diff "$T/probes-soft.txt" "$T/probes-token.txt" ||
		{ echo "the token key answers the probes unlike the software key" >&2; return 1; }
	# one s_server: its first decryption over D-Bus, the other probes' on the channel
	echo "DECRYPT frames: $f0 -> $(decrypt_frames)"
	[ "$(decrypt_frames)" -ge $((f0 + 6)) ] ||
		{ echo "the probes' decryptions did not go over the channel" >&2; return 1; }
}
tap_case "ROBOT probes against the token key (over the signing channel): the same answers as the software key (implicit rejection)" \
	case_probes_token

# legacy PROTO: ECDHE-RSA with the token key, the ServerKeyExchange signed
# over MD5-SHA1 (TLS 1.0/1.1)
legacy() {
	local proto=$1 name
	name=$([ "$proto" = tls1 ] && echo TLSv1 || proto_name "$proto")
	sig_mark || return 1
	server "srv-$proto" "$(uri rsakex)" "$T/rsakex.pem" 1 "-$proto" \
		-cipher 'ECDHE-RSA-AES128-SHA@SECLEVEL=0' || return 1
	if ! connect "$proto" "-$proto" -cipher 'ECDHE-RSA-AES128-SHA@SECLEVEL=0'; then
		cat "$T/$proto.out" "$T/srv-$proto.log" >&2
		return 1
	fi
	stop_checked "$BG_PID" s_server || return 1
	grep -Eq "^ *Protocol *: $name\$" "$T/$proto.out" &&
		grep -Eq '^ *Cipher *: ECDHE-RSA-AES128-SHA$' "$T/$proto.out" ||
		{ cat "$T/$proto.out" >&2; echo "not an ECDHE-RSA $proto session" >&2; return 1; }
	sig_signed
}
for proto in tls1 tls1_1; do
	tap_case "token RSA key, $proto ECDHE-RSA: ServerKeyExchange signed over MD5-SHA1" \
		legacy "$proto"
done

tap_done
