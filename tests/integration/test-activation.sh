#!/bin/bash
# Activation: the systemd units are valid, a socket-activated agent starts on
# the first connection and signs, leaves when idle with no token logged in
# (and stays while one is), and tells systemd when it is ready.
. "$(dirname "$0")/lib.sh"

it_setup
for tool in systemd-socket-activate systemd-analyze python3; do
	command -v "$tool" >/dev/null || tap_bail "$tool not installed (package systemd / python3)"
done
BUILD=$(dirname "$(dirname "$P11AGENTD")")

case_units_verify() {
	local u out rc=0
	for u in p11agentd.service p11agentd.socket p11agentd-system.service; do
		[ -f "$BUILD/packaging/$u" ] || { echo "unit $u not built" >&2; return 1; }
		# point ExecStart at the built agent so verify can check it exists
		sed "s#ExecStart=[^ ]*/p11agentd#ExecStart=$P11AGENTD#" "$BUILD/packaging/$u" >"$T/$u"
	done
	for u in p11agentd.service p11agentd.socket p11agentd-system.service; do
		out=$(cd "$T" && systemd-analyze verify --man=no "./$u" 2>&1)
		if [ -n "$out" ]; then
			echo "$u: $out" >&2
			rc=1
		fi
	done
	return $rc
}
tap_case "systemd units pass systemd-analyze verify" case_units_verify

ASOCK=$T/act.sock
# activated AGENT-ARGS...: systemd-socket-activate listens on $ASOCK and
# starts the agent on the first connection.
activated() {
	rm -f "$ASOCK"
	systemd-socket-activate -l "$ASOCK" -E SOFTHSM2_CONF -E ASAN_OPTIONS -E LSAN_OPTIONS \
		"$P11AGENTD" --foreground --module "$MODULE" "$@" >>"$T/act.log" 2>&1 &
	ACT_PID=$!
	IT_BG_PIDS+=("$ACT_PID")
	for _ in $(seq 50); do
		[ -S "$ASOCK" ] && return 0
		sleep 0.1
	done
	echo "systemd-socket-activate did not listen on $ASOCK" >&2
	return 1
}
# systemd-socket-activate execs the agent in its own process on the first
# connection: the agent runs once that process is called p11agentd.
agent_running() { [ "$(cat "/proc/$ACT_PID/comm" 2>/dev/null)" = p11agentd ]; }
export LSAN_OPTIONS="suppressions=$IT_LIB_DIR/../unit/lsan-softhsm.supp"
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}fast_unwind_on_malloc=0"

case_first_connection_starts_agent() {
	activated --pin-source "file:$T/pin" --idle-exit 1 || return 1
	if agent_running; then
		echo "the agent runs before anyone connected" >&2
		return 1
	fi
	head -c 64 /dev/urandom >"$T/d"
	plain dgst -sha256 -binary -out "$T/d.sha256" "$T/d"
	IT_CNF=$T/act.cnf
	sed "s#^agent-socket = .*#agent-socket = $ASOCK#" "$CNF" >"$IT_CNF"
	client pkeyutl -sign -inkey "$(uri p256)" -in "$T/d.sha256" -out "$T/d.sig" || return 1
	unset IT_CNF
	plain x509 -in "$T/certs/p256.pem" -pubkey -noout >"$T/p256.pub"
	plain pkeyutl -verify -pubin -inkey "$T/p256.pub" -in "$T/d.sha256" -sigfile "$T/d.sig" ||
		return 1
	grep -q "listening on the socket passed by systemd" "$T/act.log"
}
tap_case "socket activation: the first client starts the agent, which signs" \
	case_first_connection_starts_agent

case_stays_while_logged_in() {
	# the agent above logged in with the PIN file: idle-exit must not fire
	sleep 3
	agent_running || { echo "the agent left although a token is logged in" >&2; return 1; }
	stop_pid "$ACT_PID"
}
tap_case "socket activation: the agent stays while a token is logged in" case_stays_while_logged_in

case_idle_exit() {
	activated --idle-exit 1 || return 1
	"$P11AGENTCTL" --socket "$ASOCK" status >/dev/null || return 1
	for _ in $(seq 60); do
		agent_running || break
		sleep 0.1
	done
	if agent_running; then
		echo "the agent did not exit when idle" >&2
		return 1
	fi
	wait "$ACT_PID"
	local rc=$?
	[ "$rc" -eq 0 ] || { echo "exit status $rc" >&2; return 1; }
	grep -q "idle for 1 s with no token logged in: exiting" "$T/act.log"
}
tap_case "socket activation: idle with no token logged in, the agent exits (status 0)" case_idle_exit

# notify_listen OUT: a NOTIFY_SOCKET at $T/notify.sock that writes the
# first datagram it gets to OUT; sets NOTIFY_PID once it listens.
notify_listen() {
	rm -f "$T/notify.sock"
	python3 - "$T/notify.sock" >"$1" 2>&1 <<'PY' &
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
s.settimeout(20)
print(s.recv(512).decode())
PY
	NOTIFY_PID=$!
	for _ in $(seq 50); do [ -S "$T/notify.sock" ] && break; sleep 0.1; done
}

case_sd_notify_ready() {
	notify_listen "$T/notify.out"
	local py=$NOTIFY_PID
	NOTIFY_SOCKET=$T/notify.sock agent_start || return 1
	wait "$py"
	agent_stop
	grep -qx "READY=1" "$T/notify.out" || { cat "$T/notify.out" >&2; return 1; }
}
tap_case "the agent tells systemd READY=1 (sd_notify) once it listens" case_sd_notify_ready

case_sd_notify_status_says_cannot_sign() {
	notify_listen "$T/notify2.out"
	local py=$NOTIFY_PID
	echo 000000 >"$T/pin.wrong"
	NOTIFY_SOCKET=$T/notify.sock agent_start "$T/pin.wrong" || return 1
	wait "$py"
	agent_stop || return 1
	cat "$T/notify2.out"
	grep -qx "READY=1" "$T/notify2.out" &&
		grep -q "^STATUS=cannot sign yet: token 'p11agent-test' is not logged in" "$T/notify2.out" &&
		grep -q "ready, but token 'p11agent-test' is not logged in" "$T/agent.log"
}
tap_case "a wrong PIN file: READY comes with STATUS= saying which token cannot sign, and a log line" \
	case_sd_notify_status_says_cannot_sign

case_detached_leaves_terminal() {
	# the "terminal" is a file: nothing is written to it once the agent
	# detached, not even the audit line of a signature
	local sock=$T/detached.sock rc=0 pid
	env -u OPENSSL_CONF "$P11AGENTD" --module "$MODULE" --socket "$sock" \
		--pin-source "file:$T/pin" >"$T/tty.out" 2>"$T/tty.err" </dev/null || rc=$?
	[ "$rc" -eq 0 ] || { echo "detaching p11agentd exited $rc" >&2; cat "$T/tty.err" >&2; return 1; }
	pid=$(with_timeout 10 "$P11AGENTCTL" --socket "$sock" status | sed -n 's/^agent: .*(pid \([0-9]*\))$/\1/p')
	[ -n "$pid" ] || return 1
	local before
	before=$(wc -c <"$T/tty.err")
	head -c 32 /dev/urandom >"$T/det.dgst"
	P11AGENT_SOCKET=$sock client pkeyutl -sign -inkey "$(uri p256)" -in "$T/det.dgst" \
		-out "$T/det.sig" || { echo "the client could not sign through the detached agent" >&2; rc=1; }
	kill -TERM "$pid"
	for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
	! kill -0 "$pid" 2>/dev/null || { echo "detached agent still running" >&2; kill -KILL "$pid"; return 1; }
	cat "$T/tty.err"
	[ "$rc" -eq 0 ] || return 1
	[ "$(wc -c <"$T/tty.err")" -eq "$before" ] && [ ! -s "$T/tty.out" ] ||
		{ echo "the detached agent wrote to its terminal after detaching" >&2; return 1; }
}
tap_case "a detached agent writes nothing more to the terminal that started it" case_detached_leaves_terminal
tap_done
