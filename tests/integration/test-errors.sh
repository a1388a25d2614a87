#!/bin/bash
# Failures must be quick (every client runs under timeout) and say what went
# wrong. A client that hangs (status 124) or dies by a signal (> 128, e.g.
# SIGPIPE 141 or an ASan abort 134) fails the case.
. "$(dirname "$0")/lib.sh"

it_setup
agent_start || tap_bail "p11agentd did not start"

head -c 1000 /dev/urandom >"$T/msg"
plain dgst -sha256 -binary -out "$T/msg.sha256" "$T/msg" || tap_bail "openssl dgst"
plain dgst -sha3-256 -binary -out "$T/msg.sha3" "$T/msg" || tap_bail "openssl dgst"

# failed_cleanly STATUS: STATUS is an ordinary failure (not 0, not a timeout,
# not a signal).
failed_cleanly() {
	case $1 in
	0) echo "the command succeeded; it should have failed" >&2 ;;
	124 | 137) echo "the command hung (killed by timeout)" >&2 ;;
	*) [ "$1" -lt 128 ] && return 0
	   echo "the command died by signal $(($1 - 128))" >&2 ;;
	esac
	return 1
}

# message FILE: FILE without the words that are there whatever happened (the
# URI, the token label, the provider's library name in OpenSSL's
# "error:XXXXXXXX:p11agent:..." lines, the module path), so a grep on it
# matches only what the provider/agent said about the cause.
message() {
	sed -e 's/pkcs11:[^ ]*//g' -e 's/p11agent-test//g' -e 's/:p11agent:/::/g' \
		-e 's#[^ ]*p11agent\.so##g' "$1"
}

sign() { # sign KEY OUT-PREFIX [more pkeyutl args]: pkeyutl -sign, status
	local k=$1 out=$2
	shift 2
	client pkeyutl -sign -inkey "$(uri "$k")" -in "$T/msg.sha256" \
		-out "$out.sig" "$@" >"$out.out" 2>"$out.err"
}

# --- unknown key ------------------------------------------------------
unknown_uri() {
	local rc=0 u="pkcs11:token=$P11AGENT_TEST_TOKEN;object=nope;type=private"
	sign p256 "$T/known" ||
		{ echo "a known URI fails too:" >&2; cat "$T/known.err" >&2; return 1; }
	client pkeyutl -sign -inkey "$u" -in "$T/msg.sha256" -out "$T/nope.sig" \
		2>"$T/nope.err" || rc=$?
	cat "$T/nope.err"
	failed_cleanly "$rc" || return 1
	# openssl itself prints the URI ("Could not open file or uri ... from
	# pkcs11:..."): only the provider's own error line counts
	grep ':p11agent:' "$T/nope.err" >"$T/nope.prov"
	grep -qF "object=nope" "$T/nope.prov" ||
		{ echo "the provider's error does not name the URI" >&2; return 1; }
	message "$T/nope.prov" | grep -Eqi 'no such key|not found|no matching|NoSuchKey|unknown key' ||
		{ echo "the provider's error does not say that no such key exists" >&2; return 1; }
}
tap_case "unknown URI: clear 'no such key' error naming the URI" unknown_uri

# --- P11AGENT_SOCKET overrides agent-socket ---------------------------
socket_env() {
	local rc=0
	write_cnf "$T/badsock.cnf"
	sed -i "s#^agent-socket = .*#agent-socket = $T/nowhere.sock#" "$T/badsock.cnf"
	P11AGENT_SOCKET=$SOCK IT_CNF=$T/badsock.cnf sign p256 "$T/env-ok" ||
		{ echo "P11AGENT_SOCKET=$SOCK did not override agent-socket" >&2
		  cat "$T/env-ok.err" >&2; return 1; }
	P11AGENT_SOCKET=$T/nowhere.sock sign p256 "$T/env-bad" || rc=$?
	cat "$T/env-bad.err"
	failed_cleanly "$rc"
}
tap_case "P11AGENT_SOCKET overrides the agent-socket parameter" socket_env

# --- mechanism the token lacks -----------------------------------------
# RSA-PSS over SHA3-256: OpenSSL's default provider signs it (checked with
# the software key first), the provider passes it on, and the request gets
# to the agent's mechanism mapping: CKM_RSA_PKCS_PSS with CKM_SHA3_256 /
# CKG_MGF1_SHA3_256, which SoftHSM 2.6 does not implement (it accepts SHA-1
# and SHA-2 only). The agent's table or the token must refuse it, and the
# client must hear "unsupported", not a generic failure.
unsupported() {
	local rc=0 before after opts=(-pkeyopt rsa_padding_mode:pss
		-pkeyopt rsa_pss_saltlen:digest -pkeyopt digest:sha3-256)
	plain pkeyutl -sign -inkey "$T/soft/rsa2048.key" "${opts[@]}" \
		-in "$T/msg.sha3" -out "$T/sha3-soft.sig" ||
		{ echo "software RSA-PSS/SHA3-256 failed: test premise broken" >&2; return 1; }
	# the same key with RSA-PSS over SHA-256 works: the failure below is
	# about the mechanism, not about loading the key
	sign rsa2048 "$T/pss256" -pkeyopt rsa_padding_mode:pss \
		-pkeyopt rsa_pss_saltlen:digest -pkeyopt digest:sha256 ||
		{ echo "RSA-PSS/SHA-256 with the token key failed:" >&2
		  cat "$T/pss256.err" >&2; return 1; }
	before=$(agent_signatures) || return 1
	client pkeyutl -sign -inkey "$(uri rsa2048)" "${opts[@]}" \
		-in "$T/msg.sha3" -out "$T/sha3.sig" 2>"$T/sha3.err" || rc=$?
	cat "$T/sha3.err"
	failed_cleanly "$rc" || return 1
	if grep -q 'Could not open file or uri' "$T/sha3.err"; then
		echo "the key did not load" >&2
		return 1
	fi
	message "$T/sha3.err" | grep -Eqi 'unsupported|not supported|mechanism' ||
		{ echo "error does not say the mechanism is unsupported" >&2; return 1; }
	after=$(agent_signatures) || return 1
	[ "$after" -eq "$before" ] ||
		{ echo "signature counter moved ($before -> $after) on a refused request" >&2; return 1; }
}
tap_case "RSA-PSS with SHA3-256 (token lacks it): 'unsupported' error" unsupported

# --- agent killed between key load and signature (same process) ------
# s_client loads the key (talking to the agent), connects through a relay
# that holds the connection; the agent is SIGKILLed; then the handshake
# needs CertificateVerify. The client must fail with an error, not hang or
# die of SIGPIPE.
killed_mid_handshake() {
	local dir=$T/killed-hs rc=0 cpid rpid i
	mkdir -p "$dir"
	server_start "$dir" -tls1_3 || return 1
	python3 "$IT_LIB_DIR/hold-relay.py" "$dir/relay.port" "$dir/go" "$SRV_PORT" &
	rpid=$!
	IT_BG_PIDS+=("$rpid")
	for ((i = 0; i < 100; i++)); do
		[ -s "$dir/relay.port" ] && break
		sleep 0.05
	done
	[ -s "$dir/relay.port" ] || { echo "relay did not start" >&2; return 1; }
	client s_client -connect "127.0.0.1:$(cat "$dir/relay.port")" -servername localhost \
		-CAfile "$T/ca.pem" -verify_return_error -tls1_3 \
		-cert "$T/certs/p256.pem" -key "$(uri p256)" -brief \
		</dev/null >"$dir/client.out" 2>"$dir/client.err" &
	cpid=$!
	for ((i = 0; i < 200; i++)); do
		[ -e "$dir/relay.port.accepted" ] && break
		kill -0 "$cpid" 2>/dev/null || break
		sleep 0.05
	done
	if [ ! -e "$dir/relay.port.accepted" ]; then
		echo "s_client did not connect (key load failed?):" >&2
		cat "$dir/client.err" >&2
		return 1
	fi
	agent_kill
	touch "$dir/go"
	wait "$cpid" || rc=$?
	stop_pid "$rpid" || true
	stop_pid "$SRV_PID" || true
	cat "$dir/client.err"
	failed_cleanly "$rc" || return 1
	if grep -q '^CONNECTION ESTABLISHED' "$dir/client.err"; then
		echo "handshake completed without an agent" >&2
		return 1
	fi
	message "$dir/client.err" | grep -Eqi 'agent|socket|disconnect' ||
		{ echo "error does not say the agent went away" >&2; return 1; }
}
tap_case "agent SIGKILLed between key load and CertificateVerify: client fails cleanly" \
	killed_mid_handshake

restart() {
	agent_stop >/dev/null 2>&1
	agent_start || return 1
	sign p256 "$T/restart" || { cat "$T/restart.err" >&2; return 1; }
	plain x509 -in "$T/certs/p256.pem" -pubkey -noout -out "$T/p256.pub" &&
		plain pkeyutl -verify -pubin -inkey "$T/p256.pub" -in "$T/msg.sha256" \
			-sigfile "$T/restart.sig"
}
tap_case "agent restarted (stale socket): signing works again" restart

# --- agent killed during a run of signatures --------------------------
sign_loop() { # sign_loop ID: sign until $T/stop exists, log statuses
	local rc n=0
	while [ ! -e "$T/stop" ] && [ "$n" -lt 2000 ]; do
		rc=0
		sign p256 "$T/loop-$1" || rc=$?
		echo "$rc" >>"$T/loop-$1.status"
		n=$((n + 1))
	done
}
killed_in_loop() {
	local p1 p2 i ok bad weird
	rm -f "$T/stop" "$T"/loop-*.status
	sign_loop 1 &
	p1=$!
	sign_loop 2 &
	p2=$!
	IT_BG_PIDS+=("$p1" "$p2")
	for ((i = 0; i < 200; i++)); do
		[ "$(cat "$T"/loop-*.status 2>/dev/null | grep -c '^0$')" -ge 5 ] && break
		sleep 0.05
	done
	agent_kill
	sleep 1
	touch "$T/stop"
	wait "$p1" "$p2"
	ok=$(cat "$T"/loop-*.status | grep -c '^0$')
	bad=$(cat "$T"/loop-*.status | grep -c '^1$')
	weird=$(cat "$T"/loop-*.status | grep -Evc '^[01]$')
	echo "signatures: $ok succeeded, $bad failed, $weird hung or crashed"
	[ "$ok" -ge 1 ] || { echo "no signature succeeded before the kill" >&2; return 1; }
	[ "$bad" -ge 1 ] || { echo "no signature failed after the kill" >&2; return 1; }
	[ "$weird" -eq 0 ] || {
		echo "statuses other than 0/1:" >&2
		cat "$T"/loop-*.status | grep -Ev '^[01]$' | sort | uniq -c >&2
		return 1
	}
}
tap_case "agent SIGKILLed during a run of signatures: clients fail cleanly" killed_in_loop
tap_case "agent restarted after SIGKILL: signing works again" restart

# --- no agent ------------------------------------------------------------
no_agent() {
	local rc=0
	agent_stop >/dev/null 2>&1
	sign p256 "$T/noagent" || rc=$?
	cat "$T/noagent.err"
	failed_cleanly "$rc" || return 1
	message "$T/noagent.err" | grep -Eqi 'agent|socket' ||
		{ echo "error names neither the agent nor its socket" >&2; return 1; }
}
tap_case "agent not running: error names the agent/socket" no_agent

# --- wrong PIN ---------------------------------------------------------
# The agent must report PIN incorrect and never replay a PIN the token
# rejected: two signature requests, one C_Login failure. SoftHSM keeps no
# retry counter, but it sets CKF_USER_PIN_COUNT_LOW after a failed login
# (pkcs11-tool -L shows "user PIN count low") and clears it on success; the
# count of failed logins comes from the agent's log, one line matching
# "PIN incorrect" per C_Login that returned CKR_PIN_INCORRECT.
wrong_pin() {
	local rc1=0 rc2=0 n p11 from
	p11=(pkcs11-tool --module "$MODULE" --token-label "$P11AGENT_TEST_TOKEN")
	printf '%s' "wrong-$(cat "$T/pin")" >"$T/pin.wrong"
	chmod 0600 "$T/pin.wrong"
	agent_stop >/dev/null 2>&1
	# count in this agent's lines only (the log stays whole for it_finish)
	from=$(($(wc -l <"$T/agent.log") + 1))
	agent_start "$T/pin.wrong" || return 1
	sign p256 "$T/wrongpin1" || rc1=$?
	sign p256 "$T/wrongpin2" || rc2=$?
	cat "$T/wrongpin1.err" "$T/wrongpin2.err"
	failed_cleanly "$rc1" || return 1
	failed_cleanly "$rc2" || return 1
	message "$T/wrongpin1.err" | grep -Eqi '\bpin\b|PinIncorrect|PinLocked' ||
		{ echo "client error does not mention the PIN" >&2; return 1; }
	n=$(tail -n "+$from" "$T/agent.log" | grep -Eci 'pin[ _-]?incorrect' || true)
	[ "$n" -eq 1 ] || {
		echo "agent log has $n 'PIN incorrect' lines, expected exactly 1 (no retry):" >&2
		return 1
	}
	with_timeout 20 "${p11[@]}" -L >"$T/flags.txt" 2>&1
	grep -q 'user PIN count low' "$T/flags.txt" || {
		echo "token shows no failed login (no 'user PIN count low'):" >&2
		cat "$T/flags.txt" >&2
		return 1
	}
	grep -Eq 'PIN locked|final try' "$T/flags.txt" && {
		echo "token PIN locked or at final try" >&2
		return 1
	}
	agent_stop >/dev/null 2>&1
	with_timeout 20 "${p11[@]}" --login --pin "$(cat "$T/pin")" --list-objects \
		>/dev/null 2>&1 || { echo "the right PIN no longer logs in" >&2; return 1; }
}
tap_case "wrong PIN: 'PIN incorrect' reported once, not retried, token still usable" wrong_pin
tap_case "agent with the right PIN: signing works" restart

# --- the agent's own OpenSSL config loads p11agent ----------------------
# DESIGN: the agent must never load the p11agent provider (it would call
# itself). Start it with the clients' openssl.cnf and sign.
self_loop() {
	agent_stop >/dev/null 2>&1
	IT_AGENT_CNF=$CNF agent_start || return 1
	sign p256 "$T/selfloop" || { cat "$T/selfloop.err" >&2; return 1; }
}
tap_case "agent started with OPENSSL_CONF loading p11agent does not call itself" self_loop

tap_case "agent exits with status 0 on SIGTERM" agent_stop
tap_done
