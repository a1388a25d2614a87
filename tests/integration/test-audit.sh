#!/bin/bash
# audit-interval (agent.conf(5), AUDIT): with audit = all, the first
# successful use of a key by a connection is recorded at once, the next
# ones within the interval are counted into one summary record (count=N);
# every use is in exactly one record, over the signing channel and over
# D-Bus alike. A quiet client that stays connected gets its summary within
# a few intervals; disconnecting and SIGHUP write it at once; a refusal is
# recorded at once even while a summary is pending; audit-interval = 0 is
# one record per use.
. "$(dirname "$0")/lib.sh"

it_setup
[ -x "${P11AGENT_HOLDSIGN:-}" ] || tap_bail "holdsign not built: ${P11AGENT_HOLDSIGN:-unset}"
OPENSSL_EXE=$(readlink -f "$(command -v openssl)")
AGENT_CONF=$T/agent.conf
N=200
head -c 300 /dev/urandom >"$T/msg"
plain dgst -sha256 -binary -out "$T/msg.sha256" "$T/msg" || tap_bail "openssl dgst"

# conf INTERVAL: agent.conf with audit = all, that interval, and a key
# (rsa2048) that nobody may use (allow-exe of a program that does not exist)
conf() {
	cat >"$AGENT_CONF.new" <<EOF
[agent]
audit = all
${1:+audit-interval = $1}
[key pkcs11:object=rsa2048]
allow-exe = /nonexistent/program
EOF
	chmod 0600 "$AGENT_CONF.new"
	mv "$AGENT_CONF.new" "$AGENT_CONF"
}


# uses PID: the successful signatures of PID the audit records account for
# (a record without count= is one use); records PID: how many records
uses() {
	awk -v pid="$1" '/audit: .*event=sign / && / result="ok"/ && $0 ~ (" pid=" pid " ") {
		n = 1
		if (match($0, / count=[0-9]+/)) n = substr($0, RSTART + 7, RLENGTH - 7)
		s += n
	} END { print s + 0 }' "$T/agent.log"
}
records() {
	grep -c "audit: .*event=sign .* pid=$1 .*result=\"ok\"" "$T/agent.log"
}

# wait_uses PID WANT SECONDS: until the records of PID add up to WANT
wait_uses() {
	local i
	for ((i = 0; i < $3 * 10; i++)); do
		[ "$(uses "$1")" -ge "$2" ] && break
		sleep 0.1
	done
	echo "pid $1: $(records "$1") records for $(uses "$1") uses (want $2) after $((i / 10)).$((i % 10)) s"
	[ "$(uses "$1")" -eq "$2" ]
}

# hold_start [ENV...]: a holdsign of p256 (coproc HOLD), loaded
hold_start() {
	local loaded
	coproc HOLD { exec env OPENSSL_CONF="$CNF" ${IT_PRELOAD:+LD_PRELOAD="$IT_PRELOAD"} "$@" \
		timeout 120 "$P11AGENT_HOLDSIGN" "$(uri p256)" 2>"$T/holdsign.err"; }
	IT_BG_PIDS+=("$HOLD_PID")
	read -r -t 30 loaded <&"${HOLD[0]}"
	[ "$loaded" = loaded ] || { echo "holdsign did not load the key: $(cat "$T/holdsign.err")" >&2; return 1; }
	# the pid in the records: holdsign, the child of timeout(1)
	SIGNER=$(pgrep -P "$HOLD_PID" -x holdsign) || { echo "no holdsign under pid $HOLD_PID" >&2; return 1; }
}
# hold_sign COUNT: COUNT signatures, each one verified by holdsign
hold_sign() {
	local i line bad=0
	for ((i = 0; i < $1; i++)); do echo sign; done >&"${HOLD[1]}" || return 1
	for ((i = 0; i < $1; i++)); do
		read -r -t 30 line <&"${HOLD[0]}" || { echo "holdsign did not answer" >&2; return 1; }
		[ "$line" = ok ] || bad=$((bad + 1))
	done
	[ "$bad" -eq 0 ] || { echo "$bad of $1 signatures failed" >&2; return 1; }
}
hold_end() {
	local st=0
	exec {HOLD[1]}>&-
	wait "$HOLD_PID" || st=$?
	[ "$st" -eq 0 ] || { echo "holdsign ended with status $st" >&2; return 1; }
}

conf ""
IT_AGENT_ARGS=(--config "$AGENT_CONF")
agent_start || tap_bail "p11agentd did not start"

# A connected client that goes quiet: its summary comes within a few
# intervals (default 1 s), not only when it leaves.
case_default_channel() {
	local pid
	hold_start || return 1
	pid=$SIGNER
	hold_sign "$N" || return 1
	wait_uses "$pid" "$N" 5 || return 1
	grep -q "audit: .*event=sign .* pid=$pid .*result=\"ok\" duration_us=[0-9]* count=[0-9]* since=" \
		"$T/agent.log" || { echo "no summary record (count=, since=)" >&2; return 1; }
	[ "$(records "$pid")" -le 10 ] || { echo "$(records "$pid") records: not summed up" >&2; return 1; }
	hold_end || return 1
	[ "$(uses "$pid")" -eq "$N" ] || { echo "more records after the client left" >&2; return 1; }
}
tap_case "channel, default audit-interval (1 s): $N signatures add up to $N in a few records, written while the client stays connected" \
	case_default_channel

case_default_dbus() {
	local pid
	hold_start P11AGENT_CHANNEL=0 || return 1
	pid=$SIGNER
	hold_sign "$N" || return 1
	wait_uses "$pid" "$N" 5 || return 1
	[ "$(records "$pid")" -le 10 ] || { echo "$(records "$pid") records: not summed up" >&2; return 1; }
	hold_end
}
tap_case "D-Bus Sign, default audit-interval: $N signatures add up to $N in a few records" case_default_dbus

# A long interval: the summary is pending while a refusal is recorded at
# once; it comes when the client leaves.
case_refusal_and_exit() {
	local pid r0
	conf 1h
	agent_hup || return 1
	hold_start || return 1
	pid=$SIGNER
	hold_sign 50 || return 1
	sleep 0.5
	echo "pending: $(records "$pid") records for $(uses "$pid") uses"
	[ "$(uses "$pid")" -lt 50 ] || { echo "no summary pending with audit-interval = 1h" >&2; return 1; }
	r0=$(grep -c 'audit: .*event=sign .*object=rsa2048.*result="denied"' "$T/agent.log")
	client pkeyutl -sign -inkey "$(uri rsa2048)" -in "$T/msg.sha256" -out "$T/denied.sig" 2>"$T/denied.err" &&
		{ echo "the refused key signed" >&2; return 1; }
	[ "$(grep -c 'audit: .*event=sign .*object=rsa2048.*result="denied"' "$T/agent.log")" -gt "$r0" ] ||
		{ echo "the refusal was not recorded at once" >&2; return 1; }
	hold_end || return 1
	wait_uses "$pid" 50 3
}
tap_case "audit-interval = 1h: a refusal is recorded at once while a summary is pending; it is written when the client leaves" \
	case_refusal_and_exit

case_reload_flush() {
	local pid
	hold_start || return 1
	pid=$SIGNER
	hold_sign 30 || return 1
	[ "$(uses "$pid")" -lt 30 ] || { echo "no summary pending" >&2; return 1; }
	agent_hup || return 1
	wait_uses "$pid" 30 3 || return 1
	hold_end
}
tap_case "audit-interval = 1h: SIGHUP writes the pending summary" case_reload_flush

case_interval_zero() {
	local pid
	conf 0
	agent_hup || return 1
	hold_start || return 1
	pid=$SIGNER
	hold_sign "$N" || return 1
	wait_uses "$pid" "$N" 5 || return 1
	[ "$(records "$pid")" -eq "$N" ] || { echo "not one record per signature" >&2; return 1; }
	hold_end
}
tap_case "audit-interval = 0: one record per signature ($N)" case_interval_zero

case_bad_values() {
	local v rc=0
	for v in -1 abc 3601 99999999999999999999 1x; do
		conf "$v"
		if with_timeout 10 "$P11AGENTD" --foreground --module "$MODULE" --socket "$T/bad.sock" \
			--config "$AGENT_CONF" --pin-source "file:$T/pin" >"$T/bad.out" 2>&1 </dev/null; then
			echo "audit-interval = $v was accepted" >&2
			rc=1
		elif ! grep -q "audit-interval = '$v'.*expected a duration from 0 to 1h" "$T/bad.out"; then
			echo "audit-interval = $v: no clear error:" >&2
			cat "$T/bad.out" >&2
			rc=1
		fi
	done
	return $rc
}
tap_case "audit-interval = -1, abc, 3601, a huge number, 1x: the agent refuses to start, naming the setting" \
	case_bad_values

tap_done
