#!/bin/bash
# Desktop life with a PIN that only the user knows: the agent prompts once
# (pinentry) for every program, retries safely, caches the login per token
# with timeouts, and lock/forget/unlock/tokens work from p11agentctl.
. "$(dirname "$0")/lib.sh"

it_setup
PINENTRY=$IT_LIB_DIR/fake-pinentry.sh
PIN=$(cat "$T/pin")
export FAKE_PINENTRY_LOG=$T/pinentry.log FAKE_PINENTRY_COUNT=$T/pinentry.count
head -c 200 /dev/urandom >"$T/msg"
plain dgst -sha256 -binary -out "$T/msg.sha256" "$T/msg" || tap_bail "openssl dgst"
plain x509 -in "$T/certs/p256.pem" -pubkey -noout >"$T/p256.pub"

# An agent with no PIN source: PINs come from the prompt only.
desktop_agent() { # desktop_agent PINS [more agent args...]
	export FAKE_PINENTRY_PINS=$1
	shift
	rm -f "$FAKE_PINENTRY_LOG" "$FAKE_PINENTRY_COUNT"
	IT_AGENT_ARGS=(--pinentry "$PINENTRY" "$@")
	agent_start_nopin
}
# agent_start wants a PIN file: give it one that does not exist, so there is
# no PIN source worth the name (the agent warns and goes on to the prompt).
agent_start_nopin() {
	agent_start "$T/no-such-pin-file"
}
prompts() { cat "$FAKE_PINENTRY_COUNT" 2>/dev/null || echo 0; }
sign() { # sign OUT [KEY]
	client pkeyutl -sign -inkey "$(uri "${2:-p256}")" -in "$T/msg.sha256" -out "$1"
}
ctl() { with_timeout 30 "$P11AGENTCTL" --socket "$SOCK" "$@"; }

case_one_prompt_for_two_programs() {
	desktop_agent "$PIN" || return 1
	sign "$T/a.sig" &
	local p1=$!
	sign "$T/b.sig" &
	local p2=$!
	wait $p1 || return 1
	wait $p2 || return 1
	sign "$T/c.sig" || return 1
	for s in a b c; do
		plain pkeyutl -verify -pubin -inkey "$T/p256.pub" -in "$T/msg.sha256" \
			-sigfile "$T/$s.sig" || return 1
	done
	[ "$(prompts)" = 1 ] || { echo "pinentry asked $(prompts) times, not once" >&2; return 1; }
}
tap_case "three signatures from three programs, two at once: one PIN prompt" \
	case_one_prompt_for_two_programs

case_prompt_names_token_key_program() {
	grep -q 'SETDESC .*token "p11agent-test".*key "p256".*Requested by openssl (pid [0-9]*)' \
		"$FAKE_PINENTRY_LOG" || { cat "$FAKE_PINENTRY_LOG" >&2; return 1; }
	grep -q "^SETTITLE p11agent" "$FAKE_PINENTRY_LOG"
}
tap_case "the prompt names the token, the key and the program that asked" \
	case_prompt_names_token_key_program

case_no_pin_in_logs() {
	! grep -a -q -F "$PIN" "$T/agent.log" "$FAKE_PINENTRY_LOG"
}
tap_case "the PIN appears in no log" case_no_pin_in_logs

case_tokens_shows_login() {
	ctl tokens | grep -q "state: logged-in pin-cached$" || return 1
	ctl tokens | grep -q "token: login-required$" || return 1
	ctl --json tokens | python3 -c 'import json,sys; t=json.load(sys.stdin); assert t[0]["state"] == "logged-in" and t[0]["pin_cached"] and "logged-in" in t[0]["flags"], t'
}
tap_case "p11agentctl tokens (and --json) shows the login and the cached PIN" case_tokens_shows_login

case_default_cache_idle() {
	# no cache settings in agent.conf: a per-user login ends after 1 h unused
	local left
	left=$(ctl tokens | sed -n 's/^ *login expires: in \([0-9]*\) s$/\1/p')
	echo "login expires in $left s"
	[ -n "$left" ] && [ "$left" -gt 3500 ] && [ "$left" -le 3600 ]
}
tap_case "default PIN cache: a per-user login expires 1 h after its last use" case_default_cache_idle

case_lock_then_prompt_again() {
	ctl lock --all | grep -q "locked 1 token" || return 1
	ctl tokens | grep -q "state: logged-out$" || { ctl tokens >&2; return 1; }
	sign "$T/d.sig" || return 1
	[ "$(prompts)" = 2 ] || { echo "expected a second prompt after lock, got $(prompts)" >&2; return 1; }
}
tap_case "lock logs out and wipes the PIN: the next signature prompts again" \
	case_lock_then_prompt_again

case_forget_keeps_login() {
	ctl forget --all | grep -q "forgot the PINs of 1 token" || return 1
	ctl tokens | grep -q "state: logged-in$" || { ctl tokens >&2; return 1; }
	sign "$T/e.sig" || return 1
	[ "$(prompts)" = 2 ] || { echo "forget made the agent prompt" >&2; return 1; }
}
tap_case "forget wipes the cached PIN and keeps the login" case_forget_keeps_login
agent_stop

case_wrong_then_right() {
	desktop_agent "0000 $PIN" || return 1
	sign "$T/f.sig" || return 1
	[ "$(prompts)" = 2 ] || { echo "prompts: $(prompts)" >&2; return 1; }
	grep -q "^SETERROR Wrong PIN" "$FAKE_PINENTRY_LOG" || return 1
	[ "$(grep -c 'PIN typed was incorrect' "$T/agent.log")" = 1 ]
}
tap_case "a wrong PIN typed: the prompt comes back once with an error, then signs" case_wrong_then_right
agent_stop

case_cancel() {
	local rc=0
	desktop_agent "cancel" || return 1
	sign "$T/g.sig" 2>"$T/cancel.err" || rc=$?
	[ "$rc" -ne 0 ] || { echo "signed although the prompt was cancelled" >&2; return 1; }
	[ "$rc" -lt 124 ] || { echo "client hung or died: status $rc" >&2; return 1; }
	grep -qi "cancel" "$T/cancel.err" || { cat "$T/cancel.err" >&2; return 1; }
	[ "$(prompts)" = 1 ]
}
tap_case "a cancelled prompt: the program gets a clear error, no retry" case_cancel
agent_stop

case_unlock_from_ctl() {
	desktop_agent "cancel" || return 1
	echo "$PIN" | ctl unlock | grep -qx unlocked || return 1
	sign "$T/h.sig" || return 1
	[ "$(prompts)" = 0 ] || { echo "prompted although unlocked" >&2; return 1; }
	if echo 0000 | ctl unlock pkcs11:token=p11agent-test 2>"$T/unlock.err"; then
		echo "unlock of an unlocked token with a wrong PIN succeeded" >&2
		return 1
	fi
	grep -q "already unlocked" "$T/unlock.err" || { cat "$T/unlock.err" >&2; return 1; }
	if echo "$PIN" | ctl unlock 2>"$T/unlock2.err"; then
		return 1
	fi
	grep -q "no token needs a PIN" "$T/unlock2.err"
}
tap_case "p11agentctl unlock (PIN on standard input) logs in; no prompt follows" case_unlock_from_ctl

case_unlock_wrong_pin() {
	ctl lock --all >/dev/null || return 1
	if echo 0000 | ctl unlock 2>"$T/unlock-wrong.err"; then
		echo "a wrong PIN unlocked the token" >&2
		return 1
	fi
	grep -q "PIN incorrect" "$T/unlock-wrong.err" || { cat "$T/unlock-wrong.err" >&2; return 1; }
	echo "$PIN" | ctl unlock >/dev/null
}
tap_case "p11agentctl unlock with a wrong PIN says PIN incorrect" case_unlock_wrong_pin

case_unlock_lifetime() {
	local i left rc=0
	for bad in 0 -5 1x 31d; do
		if echo "$PIN" | ctl unlock -t "$bad" 2>/dev/null; then
			echo "unlock -t $bad was accepted" >&2
			return 1
		fi
	done
	ctl lock --all >/dev/null || return 1
	echo "$PIN" | ctl unlock -t 3 | grep -qx unlocked || return 1
	left=$(ctl tokens | sed -n 's/^ *login expires: in \([0-9]*\) s$/\1/p')
	echo "login expires in: $left s"
	[ -n "$left" ] && [ "$left" -le 3 ] || { ctl tokens >&2; return 1; }
	for ((i = 0; i < 100; i++)); do
		ctl tokens | grep -q "state: logged-out" && break
		sleep 0.1
	done
	ctl tokens | grep -q "state: logged-out$" || { echo "still logged in" >&2; return 1; }
	grep -q "login expired (the lifetime given to unlock)" "$T/agent.log" || return 1
	# the PIN went with the login: the next signature asks (and is cancelled)
	sign "$T/lt.sig" 2>"$T/lt.err" || rc=$?
	[ "$rc" -ne 0 ] && grep -qi cancel "$T/lt.err"
}
tap_case "p11agentctl unlock -t 3: the login and the PIN end after 3 s; bad durations refused" \
	case_unlock_lifetime
agent_stop

case_cache_idle_timeout() {
	cat >"$T/idle.conf" <<CONF
[agent]
cache-idle = 1
CONF
	desktop_agent "$PIN" --config "$T/idle.conf" || return 1
	sign "$T/i.sig" || return 1
	ctl tokens | grep -q "login expires: in" || { ctl tokens >&2; return 1; }
	for _ in $(seq 40); do
		ctl tokens | grep -q "state: logged-in" || break
		sleep 0.1
	done
	if ctl tokens | grep -q "state: logged-in"; then
		echo "still logged in after the idle timeout" >&2
		return 1
	fi
	grep -q "login expired (cache-idle)" "$T/agent.log" || return 1
	sign "$T/j.sig" || return 1
	[ "$(prompts)" = 2 ]
}
tap_case "cache-idle: an unused login expires and the next signature prompts" case_cache_idle_timeout
agent_stop

case_pinentry_tty() {
	local pe sock_cnf out
	pe=$(command -v pinentry-tty) || { echo "pinentry-tty not installed" >&2; return 1; }
	command -v tmux >/dev/null || { echo "tmux not installed" >&2; return 1; }
	IT_AGENT_ARGS=(--pinentry "$pe")
	agent_start_nopin || return 1
	out=$T/tty.sig
	sess=p11agent-$$
	tmux kill-session -t "$sess" 2>/dev/null
	# the client runs on the tmux pane's terminal; pinentry-tty asks there
	tmux new-session -d -s "$sess" -x 120 -y 30 \
		"env OPENSSL_CONF='$CNF' ${IT_PRELOAD:+LD_PRELOAD='$IT_PRELOAD'} openssl pkeyutl -sign -inkey '$(uri p256)' -in '$T/msg.sha256' -out '$out'; echo CLIENT-EXIT=\$?; sleep 30"
	for _ in $(seq 100); do
		tmux capture-pane -p -t "$sess" | grep -q "PIN" && break
		sleep 0.1
	done
	tmux capture-pane -p -t "$sess" >"$T/tty-screen-1.txt"
	grep -q "p11agent-test" "$T/tty-screen-1.txt" ||
		{ cat "$T/tty-screen-1.txt" >&2; tmux kill-session -t "$sess"; return 1; }
	tmux send-keys -t "$sess" "$PIN" Enter
	for _ in $(seq 100); do
		tmux capture-pane -p -t "$sess" | grep -q "CLIENT-EXIT=" && break
		sleep 0.1
	done
	tmux capture-pane -p -t "$sess" >"$T/tty-screen-2.txt"
	tmux kill-session -t "$sess"
	grep -q "CLIENT-EXIT=0" "$T/tty-screen-2.txt" || { cat "$T/tty-screen-2.txt" >&2; return 1; }
	if grep -q -F "$PIN" "$T/tty-screen-2.txt"; then
		echo "the PIN was echoed" >&2
		return 1
	fi
	plain pkeyutl -verify -pubin -inkey "$T/p256.pub" -in "$T/msg.sha256" -sigfile "$out"
}
tap_case "a real pinentry (pinentry-tty under tmux) on the client's terminal" case_pinentry_tty
agent_stop
# --- [key] confirm: the person allows each use, or one per DURATION -----------
case_confirm_each_use() {
	local n rc=0
	mkdir -p "$T/config/p11agent"
	printf '%s\n' "[key pkcs11:object=p256;type=private]" "confirm = yes" \
		"[key pkcs11:object=p384;type=private]" "confirm = 3s" >"$T/config/p11agent/agent.conf"
	chmod 0600 "$T/config/p11agent/agent.conf"
	export FAKE_PINENTRY_CONFIRM=$T/confirm.answer
	echo yes >"$FAKE_PINENTRY_CONFIRM"
	desktop_agent "$PIN" || return 1
	sign "$T/c1.sig" && sign "$T/c2.sig" || return 1
	n=$(grep -c '^CONFIRM$' "$FAKE_PINENTRY_LOG")
	[ "$n" = 2 ] || { echo "confirm = yes asked $n times for 2 signatures" >&2; return 1; }
	grep -q "^SETDESC Allow openssl (pid [0-9]*, uid $(id -u)) to sign with key \"p256\"" \
		"$FAKE_PINENTRY_LOG" || { cat "$FAKE_PINENTRY_LOG" >&2; return 1; }
	# the person says no: Denied, no signature
	echo no >"$FAKE_PINENTRY_CONFIRM"
	sign "$T/c3.sig" 2>"$T/c3.err" || rc=$?
	echo yes >"$FAKE_PINENTRY_CONFIRM"
	[ "$rc" -ne 0 ] || { echo "signed though the person pressed Deny" >&2; return 1; }
	[ "$rc" -ne 0 ] && grep -q "only when the person confirms it: the person denied it" \
		"$T/c3.err" || { cat "$T/c3.err" >&2; return 1; }
	grep -q 'result="not confirmed"' "$T/agent.log" || return 1
	# confirm = 3s: one confirmation covers the uses in 3 s
	: >"$FAKE_PINENTRY_LOG"
	sign "$T/c4.sig" p384 && sign "$T/c5.sig" p384 || return 1
	n=$(grep -c '^CONFIRM$' "$FAKE_PINENTRY_LOG")
	[ "$n" = 1 ] || { echo "confirm = 3s asked $n times for 2 quick signatures" >&2; return 1; }
	sleep 3.2
	sign "$T/c6.sig" p384 || return 1
	n=$(grep -c '^CONFIRM$' "$FAKE_PINENTRY_LOG")
	[ "$n" = 2 ] || { echo "confirm = 3s did not ask again after 3 s ($n)" >&2; return 1; }
	# keys without confirm are never asked about
	: >"$FAKE_PINENTRY_LOG"
	sign "$T/c7.sig" rsa2048 || return 1
	! grep -q '^CONFIRM$' "$FAKE_PINENTRY_LOG"
}
tap_case "[key] confirm = yes asks for every use (Deny refuses), confirm = 3s once per 3 s" \
	case_confirm_each_use
agent_stop
rm -f "$T/config/p11agent/agent.conf"

tap_done
