#!/bin/bash
# Smart-card life through the fault-injecting module (tests/fault/p11fault.so
# wrapping SoftHSM): card pulled and put back while a program holds the key,
# TokenRemoved/TokenInserted signals, a PIN pad, keys that need the PIN for
# every signature, PIN-try warnings, the final try, a locked PIN, a failing
# and a slow token.
. "$(dirname "$0")/lib.sh"

# The signals need a session bus: run the whole script inside one.
if [ -z "${P11AGENT_IN_BUS:-}" ]; then
	command -v dbus-run-session >/dev/null || { echo "Bail out! dbus-run-session missing"; exit 1; }
	P11AGENT_IN_BUS=1 exec dbus-run-session -- bash "$0" "$@"
fi
BUS=$DBUS_SESSION_BUS_ADDRESS
it_setup
for v in P11FAULT_SO P11FAULT_CTL P11AGENT_HOLDSIGN; do
	[ -n "${!v:-}" ] || tap_bail "$v is not set (run through meson test)"
done

export P11FAULT_MODULE=$MODULE P11FAULT_CONTROL=$T/fault.ctl P11FAULT_STATE=$T/fault.state
MODULE=$P11FAULT_SO
: >"$P11FAULT_CONTROL"
PIN=$(cat "$T/pin")
TOK="token=$P11AGENT_TEST_TOKEN"
fault() { "$P11FAULT_CTL" "$@"; }
# fault_clean: the module, now loaded by the agent, took every line of the
# control file (`fault -n set` does not wait, so it cannot check that)
fault_clean() {
	fault wait pid "$AGENT_PID" || return 1
	[ "$(fault get control.errors)" = 0 ] ||
		{ echo "p11fault rejected a control line: $(fault get control.last-error)" >&2; return 1; }
}
# agent_start_f ARGS: agent_start on p11fault.so, then fault_clean
agent_start_f() { agent_start "$@" && fault_clean; }
ctl() { with_timeout 30 "$P11AGENTCTL" --socket "$SOCK" "$@"; }
export FAKE_PINENTRY_LOG=$T/pinentry.log FAKE_PINENTRY_COUNT=$T/pinentry.count
prompts() { cat "$FAKE_PINENTRY_COUNT" 2>/dev/null || echo 0; }
head -c 100 /dev/urandom >"$T/msg"
plain dgst -sha256 -binary -out "$T/msg.sha256" "$T/msg" || tap_bail "openssl dgst"
sign() { client pkeyutl -sign -inkey "$(uri "${2:-p256}")" -in "$T/msg.sha256" -out "$1"; }
plain x509 -in "$T/certs/p256.pem" -pubkey -noout >"$T/p256.pub"

cat >"$T/agent.conf" <<CONF
[agent]
poll-interval = 1
CONF

# holdsign: one process that keeps its key across the card's absence
hold_start() {
	mkfifo "$T/hold.in"
	env OPENSSL_CONF="$CNF" ${IT_PRELOAD:+LD_PRELOAD="$IT_PRELOAD"} "$P11AGENT_HOLDSIGN" \
		"$(uri p256)" <"$T/hold.in" >"$T/hold.out" 2>&1 &
	HOLD_PID=$!
	IT_BG_PIDS+=("$HOLD_PID")
	exec 7>"$T/hold.in"
	wait_line 1 loaded
}
# wait_line N TEXT: line N of hold.out starts with TEXT (bounded)
wait_line() {
	for _ in $(seq 100); do
		[ "$(sed -n "${1}p" "$T/hold.out")" ] && break
		sleep 0.1
	done
	sed -n "${1}p" "$T/hold.out" | grep -q "^$2" ||
		{ echo "holdsign line $1: '$(sed -n "${1}p" "$T/hold.out")', wanted '$2'" >&2; return 1; }
}
hold_sign() { echo sign >&7; wait_line "$1" "$2"; }
tokens_count() { ctl --json tokens | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))'; }
wait_tokens() {
	for _ in $(seq 100); do
		[ "$(tokens_count)" = "$1" ] && return 0
		sleep 0.1
	done
	echo "the agent lists $(tokens_count) tokens, wanted $1" >&2
	return 1
}

# --- removal and re-insertion ------------------------------------------------
DBUS_SESSION_BUS_ADDRESS=$BUS dbus-monitor --session \
	"type='signal',interface='org.p11agent.Agent1'" >"$T/signals.log" 2>&1 &
IT_BG_PIDS+=("$!")
IT_AGENT_ARGS=(--config "$T/agent.conf")
export DBUS_SESSION_BUS_ADDRESS=$BUS
agent_start || tap_bail "p11agentd did not start on p11fault.so"
unset DBUS_SESSION_BUS_ADDRESS

tap_case "a program loads the key and signs" hold_start
tap_case "... signs once more" hold_sign 2 ok

case_removed() {
	fault do "remove $TOK" || return 1
	wait_tokens 0 || return 1
	hold_sign 3 error || return 1
	grep -q "token '.*' removed" "$T/agent.log"
}
tap_case "card pulled: the agent notices, the program's signature fails cleanly" case_removed

case_reinserted() {
	local logins
	logins=$(fault get C_Login)
	fault do "insert $TOK" || return 1
	wait_tokens 1 || return 1
	hold_sign 4 ok || { cat "$T/hold.out" >&2; return 1; }
	[ "$(fault get C_Login)" -gt "$logins" ] ||
		{ echo "no new login after re-insertion" >&2; return 1; }
}
tap_case "card back: the same key object signs again, after a new login" case_reinserted

case_signals() {
	for _ in $(seq 30); do
		grep -q "member=TokenInserted" "$T/signals.log" && break
		sleep 0.1
	done
	grep -q "member=TokenRemoved" "$T/signals.log" &&
		grep -q "member=TokenInserted" "$T/signals.log" &&
		grep -q "member=KeysChanged" "$T/signals.log" || { cat "$T/signals.log" >&2; return 1; }
}
tap_case "TokenRemoved, TokenInserted and KeysChanged on the session bus" case_signals
exec 7>&-
agent_stop

# --- failing and slow tokens -------------------------------------------------
agent_start || tap_bail "p11agentd did not start"
case_device_error() {
	fault do "fail C_Sign CKR_DEVICE_ERROR 1" || return 1
	if sign "$T/e.sig" 2>"$T/device.err"; then
		echo "signed through an injected device error" >&2
		return 1
	fi
	grep -qi "device" "$T/device.err" || { cat "$T/device.err" >&2; return 1; }
	sign "$T/e2.sig"
}
tap_case "a device error fails one signature with a clear error; the next works" case_device_error

case_slow() {
	local us
	fault do "delay C_Sign 300" || return 1
	sign "$T/slow.sig" || return 1
	fault do "delay C_Sign 0" || return 1
	plain pkeyutl -verify -pubin -inkey "$T/p256.pub" -in "$T/msg.sha256" \
		-sigfile "$T/slow.sig" || return 1
	# the delay was really there (else this case tests nothing): the
	# agent's audit record of this signature says how long it took
	us=$(grep 'audit: .*event=sign .*result="ok"' "$T/agent.log" | tail -n 1 |
		sed -n 's/.* duration_us=\([0-9]*\).*/\1/p')
	echo "the agent's signature took ${us:-?} us"
	[ "${us:-0}" -ge 300000 ] || { echo "C_Sign was not delayed by 300 ms" >&2; return 1; }
}
tap_case "a slow token (300 ms per C_Sign) still signs, nothing times out" case_slow
agent_stop

# --- PIN pad ----------------------------------------------------------------
case_pin_pad() {
	fault -n set "pinpad $TOK $PIN 200" || return 1
	IT_AGENT_ARGS=(--pinentry "$IT_LIB_DIR/fake-pinentry.sh")
	export FAKE_PINENTRY_PINS=cancel
	rm -f "$FAKE_PINENTRY_LOG" "$FAKE_PINENTRY_COUNT"
	export DBUS_SESSION_BUS_ADDRESS=$BUS
	agent_start_f "$T/no-pin-file" || return 1
	unset DBUS_SESSION_BUS_ADDRESS
	sign "$T/pad.sig" || return 1
	grep -q "enter the PIN on the reader's PIN pad" "$T/agent.log" || return 1
	grep -q "member=PinPadPrompt" "$T/signals.log" || { echo "no PinPadPrompt signal" >&2; return 1; }
	[ "$(prompts)" = 0 ] || { echo "the agent asked for a PIN although the reader has a pad" >&2; return 1; }
	# the pinentry showed a message (no PIN asked) naming the token and the pad
	grep -q "^SETDESC Enter the PIN for token .*p11agent-test.* on the reader's PIN pad" \
		"$FAKE_PINENTRY_LOG" && grep -qx "MESSAGE" "$FAKE_PINENTRY_LOG" ||
		{ echo "no pinentry message about the PIN pad:" >&2; cat "$FAKE_PINENTRY_LOG" >&2; return 1; }
	ctl tokens | grep -q "pin-pad"
}
tap_case "PIN pad: login with no PIN, the user told (log, signal, pinentry message)" case_pin_pad
agent_stop

# --- always-authenticate keys ------------------------------------------------
case_always_auth_prompts_each_time() {
	rm -f "$FAKE_PINENTRY_COUNT"
	fault -n set "always-auth p256" "user-pin $PIN" || return 1
	export FAKE_PINENTRY_PINS=$PIN
	IT_AGENT_ARGS=(--pinentry "$IT_LIB_DIR/fake-pinentry.sh")
	agent_start_f || return 1
	ctl keys "$(uri p256)" >/dev/null || return 1
	sign "$T/aa1.sig" || return 1
	sign "$T/aa2.sig" || return 1
	[ "$(prompts)" = 2 ] || { echo "prompts: $(prompts), wanted one per signature" >&2; return 1; }
	grep -q "SETDESC Enter the PIN to sign once" "$FAKE_PINENTRY_LOG"
}
tap_case "always-authenticate key: a context-specific login, with its own prompt, per signature" \
	case_always_auth_prompts_each_time
agent_stop

case_always_auth_stored() {
	cat >"$T/stored.conf" <<CONF
[agent]
always-auth = stored
CONF
	local before after
	rm -f "$FAKE_PINENTRY_COUNT"
	# a pinentry that would answer: a prompt would be counted, not just fail
	export FAKE_PINENTRY_PINS=$PIN
	IT_AGENT_ARGS=(--config "$T/stored.conf" --pinentry "$IT_LIB_DIR/fake-pinentry.sh")
	agent_start_f || return 1
	before=$(fault get C_Login)
	sign "$T/aa3.sig" || return 1
	sign "$T/aa4.sig" || return 1
	after=$(fault get C_Login)
	[ "$(prompts)" = 0 ] || { echo "the agent prompted $(prompts) times" >&2; return 1; }
	# the key still needed its context-specific login before each signature
	[ "$after" -ge $((before + 2)) ] ||
		{ echo "C_Login $before -> $after: no login per signature" >&2; return 1; }
}
tap_case "always-authenticate with 'always-auth = stored': the PIN source, no prompt" \
	case_always_auth_stored
agent_stop

case_always_auth_no_pin() {
	IT_AGENT_ARGS=()
	fault -n set "always-auth p256" "user-pin 99999999" || return 1
	agent_start_f || return 1
	if sign "$T/aa5.sig" 2>"$T/aa5.err"; then
		echo "signed with a wrong context PIN" >&2
		return 1
	fi
	grep -qi "PIN incorrect" "$T/aa5.err" || { cat "$T/aa5.err" >&2; return 1; }
	sign "$T/ok.sig" p384 # other keys are fine
}
tap_case "always-authenticate with a wrong PIN: PIN incorrect, other keys unaffected" \
	case_always_auth_no_pin
agent_stop

# --- PIN tries ---------------------------------------------------------------
case_count_low_warns() {
	rm -f "$FAKE_PINENTRY_COUNT" "$FAKE_PINENTRY_LOG"
	fault -n set "flags $TOK count-low" || return 1
	export FAKE_PINENTRY_PINS=$PIN
	IT_AGENT_ARGS=(--pinentry "$IT_LIB_DIR/fake-pinentry.sh")
	agent_start_f "$T/no-pin-file" || return 1
	sign "$T/low.sig" || return 1
	grep -q "SETDESC .*only a few PIN tries are left" "$FAKE_PINENTRY_LOG" ||
		{ cat "$FAKE_PINENTRY_LOG" >&2; return 1; }
}
tap_case "few PIN tries left: the prompt warns" case_count_low_warns
agent_stop

case_final_try_no_stored_pin() {
	fault -n set "flags $TOK final-try" || return 1
	IT_AGENT_ARGS=()
	agent_start_f || return 1 # PIN file, no prompt
	local before
	before=$(fault get C_Login)
	if sign "$T/final.sig" 2>"$T/final.err"; then
		echo "signed with a stored PIN at the final try" >&2
		return 1
	fi
	grep -q "final PIN try" "$T/final.err" || { cat "$T/final.err" >&2; return 1; }
	[ "$(fault get C_Login)" = "$before" ] || { echo "C_Login was called" >&2; return 1; }
}
tap_case "final try: the stored PIN is not risked, the user is told to unlock" \
	case_final_try_no_stored_pin

case_final_try_prompt() {
	agent_stop
	rm -f "$FAKE_PINENTRY_COUNT" "$FAKE_PINENTRY_LOG"
	export FAKE_PINENTRY_PINS=$PIN
	IT_AGENT_ARGS=(--pinentry "$IT_LIB_DIR/fake-pinentry.sh")
	agent_start || return 1
	sign "$T/final2.sig" || return 1
	grep -q "SETDESC .*FINAL try" "$FAKE_PINENTRY_LOG" || { cat "$FAKE_PINENTRY_LOG" >&2; return 1; }
	[ "$(prompts)" = 1 ]
}
tap_case "final try with a prompt: the user is asked, warned, and the PIN file is skipped" \
	case_final_try_prompt
agent_stop

case_pin_locked() {
	fault -n set "flags $TOK locked" || return 1
	IT_AGENT_ARGS=()
	agent_start_f || return 1
	if sign "$T/locked.sig" 2>"$T/locked.err"; then
		return 1
	fi
	grep -qi "locked" "$T/locked.err" || { cat "$T/locked.err" >&2; return 1; }
	ctl tokens | grep -q "pin-locked"
}
tap_case "a locked PIN is reported as such" case_pin_locked
agent_stop
tap_done
