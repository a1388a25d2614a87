#!/bin/bash
# Guards around keys and PINs (issue 9, findings 4 and 5):
# - allow-exe is checked at every request, not only at connect: a process
#   that connected as an allowed program and then exec'd another (a child
#   keeping the socket), or whose executable was deleted, is refused;
# - in system mode only the agent's user, root and allow-unlock-users may
#   Lock/Unlock;
# - wrong Unlock PINs are slowed down (counted at the token: C_Login calls
#   through p11fault.so);
# - at the token's final try no PIN is tried without --final-try;
# - a PIN longer than PIN_MAX is refused with an error.
# Needs root: it creates a second user for system mode.
. "$(dirname "$0")/lib.sh"

it_setup
[ "$(id -u)" -eq 0 ] || tap_bail "test-pinguard needs root (it creates a user); run it as root"
command -v runuser >/dev/null || tap_bail "runuser not installed (util-linux)"
for v in P11FAULT_SO P11FAULT_CTL P11AGENT_PINGUARD; do
	[ -n "${!v:-}" ] || tap_bail "$v is not set (run through meson test)"
done
[ -x "$P11AGENT_PINGUARD" ] || tap_bail "pinguard not built: $P11AGENT_PINGUARD"

export P11FAULT_MODULE=$MODULE P11FAULT_CONTROL=$T/fault.ctl P11FAULT_STATE=$T/fault.state
MODULE=$P11FAULT_SO
: >"$P11FAULT_CONTROL"
PIN=$(cat "$T/pin")
TOK="token=$P11AGENT_TEST_TOKEN"
TURI="pkcs11:$TOK"
fault() { "$P11FAULT_CTL" "$@"; }
ctl() { with_timeout 60 "$P11AGENTCTL" --socket "$SOCK" "$@"; }
logins() { fault get C_Login; }
PG=$(readlink -f "$P11AGENT_PINGUARD")

# The agent is alive, stops with status 0, and logged no sanitizer report.
case_agent_clean() {
	kill -0 "$AGENT_PID" 2>/dev/null || { echo "the agent died" >&2; return 1; }
	agent_stop || { echo "the agent exited with status $?" >&2; return 1; }
	if grep -E "Sanitizer|runtime error" "$T/agent.log" >&2; then
		return 1
	fi
}

# --- allow-exe, per request --------------------------------------------------
mkdir -m 0755 "$T/bin"
cp "$PG" "$T/bin/pinguard-copy"
cat >"$T/exe.conf" <<CONF
[key pkcs11:object=p256]
allow-exe = $PG $T/bin/pinguard-copy
CONF
IT_AGENT_ARGS=(--config "$T/exe.conf")
agent_start || tap_bail "p11agentd did not start with an allow-exe policy"

case_exe_changed() {
	local rc=0
	with_timeout 60 "$PG" exec-other "$SOCK" "$(uri p256)" "$T/exec.result" >"$T/exec.out" || rc=$?
	cat "$T/exec.out" "$T/exec.result"
	# the parent exec'd sleep and was ended by the child: 143 (SIGTERM)
	[ "$rc" -eq 143 ] || [ "$rc" -eq 0 ] || { echo "pinguard exit status $rc" >&2; return 1; }
	[ "$(head -n 1 "$T/exec.out")" = signed ] ||
		{ echo "the allowed program could not sign at first" >&2; return 1; }
	grep -q "^parent now runs .*sleep" "$T/exec.result" || return 1
	grep -q "^error org.p11agent.Error.Denied: .*object=p256.*changed since it connected" \
		"$T/exec.result" || { echo "the child signed through the inherited connection" >&2; return 1; }
	grep -q "denied key .*object=p256.* changed since it connected" "$T/agent.log" ||
		{ echo "no log line naming the cause" >&2; return 1; }
}
tap_case "allow-exe: a connection kept by a child after the connecting process exec'd another program is refused" \
	case_exe_changed

case_exe_deleted() {
	with_timeout 60 "$T/bin/pinguard-copy" delete-self "$SOCK" "$(uri p256)" >"$T/del.out" || return 1
	cat "$T/del.out"
	[ "$(head -n 1 "$T/del.out")" = signed ] || return 1
	[ ! -e "$T/bin/pinguard-copy" ] || return 1
	grep -q "^error org.p11agent.Error.Denied: .*deleted or replaced" "$T/del.out"
}
tap_case "allow-exe: a program whose executable was deleted is refused" case_exe_deleted

case_exe_allowed_signs() {
	with_timeout 60 "$PG" sign "$SOCK" "$(uri p256)" | grep -qx signed
}
tap_case "allow-exe: the allowed program still signs" case_exe_allowed_signs
tap_case "allow-exe: agent alive, exits 0, no sanitizer report" case_agent_clean

# --- PIN_MAX, the rate limit and the final try (no PIN source: Unlock only) --
IT_AGENT_ARGS=()
agent_start "$T/no-such-pin-file" || tap_bail "p11agentd did not start"

case_pin_max_unlock() {
	local before
	before=$(logins)
	if printf '%0257d\n' 0 | ctl unlock "$TURI" 2>"$T/long.err"; then
		echo "p11agentctl sent a 257-byte PIN" >&2
		return 1
	fi
	grep -q "at most 256" "$T/long.err" || { cat "$T/long.err" >&2; return 1; }
	with_timeout 30 "$PG" unlock-raw "$SOCK" "$TURI" 257 >"$T/long-raw.out" || return 1
	cat "$T/long-raw.out"
	grep -q "^error org.p11agent.Error.InvalidArgs: a PIN is 1 to 256 bytes, not 257" \
		"$T/long-raw.out" || return 1
	[ "$(logins)" = "$before" ] || { echo "C_Login was called for an over-long PIN" >&2; return 1; }
}
tap_case "a PIN of PIN_MAX+1 bytes is refused by p11agentctl and by the agent's Unlock" \
	case_pin_max_unlock

case_rate_limited() {
	local before after i t t0 t1 bound
	fault do reset-counters || return 1
	before=$(logins)
	t0=$(date +%s)
	for i in $(seq 20); do
		if echo 000000 | ctl unlock "$TURI" 2>>"$T/rl.err"; then
			echo "a wrong PIN unlocked the token" >&2
			return 1
		fi
	done
	t1=$(date +%s)
	after=$(logins)
	# delays of 1, 2, 4 ... s allow 1 + log2(elapsed + 1) tries (+1 for
	# rounding); slow (sanitizer) builds take longer for the 20 calls
	bound=2
	for ((t = t1 - t0 + 1; t > 1; t /= 2)); do
		bound=$((bound + 1))
	done
	echo "C_Login calls for 20 wrong Unlock PINs: $((after - before)) in $((t1 - t0)) s (at most $bound)"
	[ $((after - before)) -ge 1 ] && [ $((after - before)) -le "$bound" ] || return 1
	grep -q "wrong PINs in a row through Unlock; the next Unlock is possible in [0-9]* s" \
		"$T/rl.err" || { tail -n 5 "$T/rl.err" >&2; return 1; }
}
tap_case "20 wrong Unlock PINs reach the token only a few times (1 s, 2 s, 4 s ... apart)" \
	case_rate_limited
tap_case "rate limit: agent alive, exits 0, no sanitizer report" case_agent_clean

agent_start "$T/no-such-pin-file" || tap_bail "p11agentd did not restart"
case_final_try_refused() {
	fault do "flags $TOK final-try" reset-counters || return 1
	if echo "$PIN" | ctl unlock "$TURI" 2>"$T/final.err"; then
		echo "unlocked at the final try without --final-try" >&2
		return 1
	fi
	cat "$T/final.err"
	grep -q "final PIN try.*--final-try" "$T/final.err" || return 1
	# an old client (plain Unlock, no options) gets the same safe answer
	with_timeout 30 "$PG" unlock-raw "$SOCK" "$TURI" 6 >"$T/final-raw.out" || return 1
	grep -q "^error org.p11agent.Error.Locked: .*final PIN try" "$T/final-raw.out" ||
		{ cat "$T/final-raw.out" >&2; return 1; }
	[ "$(logins)" = 0 ] || { echo "C_Login was called $(logins) times" >&2; return 1; }
}
tap_case "final try: no PIN is tried without --final-try (C_Login count unchanged)" \
	case_final_try_refused

case_final_try_flag() {
	echo "$PIN" | ctl unlock --final-try "$TURI" | grep -qx unlocked || return 1
	[ "$(logins)" = 1 ] || { echo "C_Login was called $(logins) times" >&2; return 1; }
	with_timeout 60 "$PG" sign "$SOCK" "$(uri p256)" | grep -qx signed
}
tap_case "final try: with --final-try the PIN is tried once, and signing works" case_final_try_flag
tap_case "final try: agent alive, exits 0, no sanitizer report" case_agent_clean
: >"$P11FAULT_CONTROL" # the next agent starts without the forced final-try flag

# --- system mode: Lock/Unlock by others -------------------------------------
U2=p11agent-t2
id "$U2" >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin "$U2" ||
	tap_bail "cannot create user $U2"
# $U2 reaches the system socket below $T; a per-user agent (above) refuses
# a socket directory open to others, so $T was 0700 until now
chmod 0711 "$T"
mkdir -m 0755 "$T/sys"
SOCK=$T/sys/agent.sock
cat >"$T/sys.conf" <<CONF
[agent]
allow-users = $U2
CONF
IT_AGENT_ARGS=(--system --config "$T/sys.conf")
agent_start || tap_bail "p11agentd --system did not start"
as_u2() { with_timeout 60 runuser -u "$U2" -- "$P11AGENTCTL" --socket "$SOCK" "$@"; }

case_u2_may_not_lock() {
	local before
	as_u2 status >/dev/null || { echo "$U2 is not even admitted" >&2; return 1; }
	if as_u2 lock --all 2>"$T/u2-lock.err"; then
		echo "$U2 could lock the tokens" >&2
		return 1
	fi
	grep -q "may not lock tokens of this agent.*allow-unlock-users" "$T/u2-lock.err" ||
		{ cat "$T/u2-lock.err" >&2; return 1; }
	ctl tokens | grep -q logged-in || { echo "the token was logged out" >&2; return 1; }
	ctl lock --all | grep -qx "locked 1 token" || { echo "root could not lock" >&2; return 1; }
	before=$(logins)
	if echo "$PIN" | as_u2 unlock "$TURI" 2>"$T/u2-unlock.err"; then
		echo "$U2 could unlock" >&2
		return 1
	fi
	grep -q "may not unlock tokens of this agent.*allow-unlock-users" "$T/u2-unlock.err" ||
		{ cat "$T/u2-unlock.err" >&2; return 1; }
	[ "$(logins)" = "$before" ] || { echo "C_Login was called for $U2's PIN" >&2; return 1; }
	grep -q "event=unlock .*uid=$(id -u $U2) .*result=\"denied\"" "$T/agent.log"
}
tap_case "system mode: an admitted user who is not owner/root may not Lock or Unlock (Denied names the setting)" \
	case_u2_may_not_lock
tap_case "system mode: agent alive, exits 0, no sanitizer report" case_agent_clean

cat >>"$T/sys.conf" <<CONF
allow-unlock-users = $U2
CONF
agent_start || tap_bail "p11agentd --system did not restart"
case_u2_allowed() {
	as_u2 lock --all | grep -qx "locked 1 token" || return 1
	echo "$PIN" | as_u2 unlock "$TURI" | grep -qx unlocked
}
tap_case "system mode: a user in allow-unlock-users may Lock and Unlock" case_u2_allowed
tap_case "system mode (allow-unlock-users): agent alive, exits 0, no sanitizer report" \
	case_agent_clean
tap_done
