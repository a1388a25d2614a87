#!/bin/bash
# Connection floods and hostile sizes (issue 9, findings 2 and 3): huge
# messages are refused while they arrive, connections that do not
# authenticate and call take no client slot and are closed after
# auth-timeout, a full table closes the longest-idle client instead of
# locking a new one out, and max-clients-per-user bounds one uid. Every case
# ends with a real client signing. flood.py makes the hostile connections.
# Needs root (system mode with a second user, like test-access.sh).
. "$(dirname "$0")/lib.sh"

it_setup
command -v python3 >/dev/null || tap_bail "python3 not installed"
[ -x "${LOADSIGN:-}" ] || tap_bail "loadsign not built: ${LOADSIGN:-LOADSIGN unset}"
[ -x "${P11AGENT_HOLDSIGN:-}" ] || tap_bail "holdsign not built: ${P11AGENT_HOLDSIGN:-unset}"
[ "$(id -u)" -eq 0 ] || tap_bail "test-flood needs root (system mode with a second user)"
command -v runuser >/dev/null || tap_bail "runuser not installed (util-linux)"
FLOOD=$IT_LIB_DIR/flood.py

# Files the second user reads, as in test-access.sh.
P=$T/public
mkdir -m 0755 "$P"
head -c 300 /dev/urandom >"$P/msg"
plain dgst -sha256 -binary -out "$P/msg.sha256" "$P/msg" || tap_bail "openssl dgst"
cp "$T/pub/p256.pem" "$P/p256.pub"
O=$T/out
mkdir -m 1777 "$O"
chmod -R a+rX "$P"

agent_proc() { awk -v f="$1:" '$1 == f { print $2 }' "/proc/$AGENT_PID/status"; }
agent_fds() { find "/proc/$AGENT_PID/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l; }
agent_alive() { [ -n "$AGENT_PID" ] && kill -0 "$AGENT_PID" 2>/dev/null; }

# real_sign [NAME]: a new openssl process signs through the provider and
# the signature verifies; prints how long it took (ms).
real_sign() {
	local out=$O/${1:-real}.sig t0 t1
	t0=$(date +%s%N)
	client pkeyutl -sign -inkey "$(uri p256)" -in "$P/msg.sha256" -out "$out" || return 1
	t1=$(date +%s%N)
	plain pkeyutl -verify -pubin -inkey "$P/p256.pub" -in "$P/msg.sha256" -sigfile "$out" ||
		return 1
	REAL_MS=$(((t1 - t0) / 1000000))
	echo "real client signed in $REAL_MS ms"
}

# flood MODE N NAME [TIMEOUT]: flood.py in the background, until it has
# made its N connections (bounded: 120 s). $T/NAME.ready says how many
# are open and closed; touch $T/NAME.release to end it.
flood() {
	local mode=$1 n=$2 name=$3 timeout=${4:-60} i
	rm -f "$T/$name.ready" "$T/$name.ready.done" "$T/$name.release"
	python3 "$FLOOD" "$mode" "$SOCK" "$n" "$T/$name.ready" "$T/$name.release" "$timeout" \
		>"$T/$name.out" 2>&1 &
	FLOOD_PID=$!
	IT_BG_PIDS+=("$FLOOD_PID")
	for ((i = 0; i < 1200; i++)); do
		[ -s "$T/$name.ready" ] && break
		kill -0 "$FLOOD_PID" 2>/dev/null || break
		sleep 0.1
	done
	[ -s "$T/$name.ready" ] || { echo "flood.py $mode did not report" >&2; cat "$T/$name.out" >&2; return 1; }
	echo "$name ($mode x $n): $(cat "$T/$name.ready")"
}

# flood_end NAME PID: release it, wait; prints its final count.
flood_end() {
	touch "$T/$1.release"
	wait "$2" || { echo "flood.py $1 failed:" >&2; cat "$T/$1.out" >&2; return 1; }
	echo "$1 at the end: $(cat "$T/$1.ready.done")"
}

field() { sed -n "s/.*$2=\([0-9]*\).*/\1/p" "$1"; }

# agent_exits_clean: the agent survived the case, exits 0 on SIGTERM and
# its log holds no sanitizer report.
agent_exits_clean() {
	agent_alive || { echo "the agent died" >&2; return 1; }
	agent_stop || { echo "agent exit status $?" >&2; return 1; }
	! grep -E "Sanitizer|runtime error" "$T/agent.log" >&2
}

# --- (a) huge messages -------------------------------------------------------
# auth-timeout long enough that only the size limit can close them in time
printf '[agent]\nauth-timeout = 60\n' >"$T/a.conf"
IT_AGENT_ARGS=(--config "$T/a.conf")
agent_start || tap_bail "p11agentd did not start"
tap_case "warm-up: a real client signs" real_sign warm

case_huge_messages() {
	local hwm0 hwm1 rc=0
	hwm0=$(agent_proc VmHWM)
	flood bigmsg 6 big || return 1
	hwm1=$(agent_proc VmHWM)
	echo "agent peak RSS before ${hwm0} kB, after ${hwm1} kB"
	[ "$(field "$T/big.ready" closed)" -eq 6 ] ||
		{ echo "the agent did not close every 60 MB message" >&2; rc=1; }
	[ $((hwm1 - hwm0)) -lt $((64 * 1024)) ] ||
		{ echo "the agent grew by $(((hwm1 - hwm0) / 1024)) MiB" >&2; rc=1; }
	flood_end big "$FLOOD_PID" || rc=1
	real_sign big || rc=1
	agent_alive || { echo "the agent died" >&2; rc=1; }
	return "$rc"
}
tap_case "6 clients sending 60 MB messages: closed as the header arrives, agent grows < 64 MiB, a real client signs" \
	case_huge_messages
tap_case "agent alive, exits 0, no sanitizer report" agent_exits_clean

# --- (b) connections that never call -------------------------------------------
# The agent accepts connections in order: a real client waits behind the
# flood's connects (~0.3 ms each here, a hundred times more under ASan,
# where creating and ending a thread is slow).
if [ -n "$IT_PRELOAD" ]; then AUTH_S=15; else AUTH_S=3; fi
printf '[agent]\nmax-clients = 32\nauth-timeout = %s\n' "$AUTH_S" >"$T/b.conf"
IT_AGENT_ARGS=(--config "$T/b.conf")
agent_start || tap_bail "p11agentd did not start"
real_sign warm-b >/dev/null || tap_bail "no signature before the flood"
base_fds=$(agent_fds)

# loadsign started before the floods keeps signing through them
rm -f "$T/ls.stop"
with_timeout 120 env P11AGENT_SOCKET="$SOCK" "$LOADSIGN" --key "$(uri p256)" \
	--pubkey "$P/p256.pub" --procs 1 --threads 2 --seconds 90 --stop-file "$T/ls.stop" \
	>"$T/ls.out" 2>&1 &
LS_PID=$!
IT_BG_PIDS+=("$LS_PID")

# never_calling MODE: 600 such connections held; a new real client signs in
# less than auth-timeout while they are held; auth-timeout later all are
# closed.
never_calling() {
	local mode=$1 fpid rc=0 i
	flood "$mode" 600 "$mode" 60 || return 1
	fpid=$FLOOD_PID
	real_sign "$mode" || rc=1
	[ "${REAL_MS:-99999}" -lt $((AUTH_S * 1000)) ] ||
		{ echo "the real client needed ${REAL_MS:-?} ms: locked out until auth-timeout" >&2; rc=1; }
	# the oldest left pending are closed auth-timeout after they came
	sleep $((AUTH_S + 1))
	flood_end "$mode" "$fpid" || rc=1
	[ "$(field "$T/$mode.ready.done" open)" = 0 ] ||
		{ echo "connections that never called still open after auth-timeout" >&2; rc=1; }
	grep -q "closed a connection: uid $(id -u) .*did not authenticate and send a request within auth-timeout ($AUTH_S s)" \
		"$T/agent.log" || { echo "no log line naming auth-timeout" >&2; rc=1; }
	agent_alive || { echo "the agent died" >&2; rc=1; }
	return "$rc"
}
tap_case "600 connections sending nothing: a new real client signs at once, all closed after auth-timeout" \
	never_calling silent
sleep 1.1 # the refusal log is rate-limited: one line a second
tap_case "600 connections authenticating, then calling nothing: same" never_calling auth

case_fds_back() {
	local i n
	for ((i = 0; i < 50; i++)); do
		n=$(agent_fds)
		# loadsign's two connections (and perhaps its parent's) remain,
		# each with its signing channel: two fds in the agent
		[ "$n" -le $((base_fds + 6)) ] && break
		sleep 0.1
	done
	echo "agent fds before the floods $base_fds, now $n"
	[ "$n" -le $((base_fds + 6)) ]
}
tap_case "after the floods the agent holds no more connections than before" case_fds_back

# lsf NAME: NAME's value on loadsign's summary line.
lsf() { grep '^loadsign: ok=' "$T/ls.out" | tail -n 1 | tr ' ' '\n' | sed -n "s#^$1=\([0-9]*\).*#\1#p"; }
case_loadsign_through() {
	local ok failed
	touch "$T/ls.stop"
	wait "$LS_PID" || { cat "$T/ls.out"; return 1; }
	cat "$T/ls.out"
	ok=$(lsf ok) failed=$(lsf failed)
	[ "${ok:-0}" -gt 0 ] && [ "${failed:-1}" -eq 0 ] && [ "$(lsf verify_failed)" = 0 ]
}
tap_case "a signer started before the floods signed through them with zero failures" \
	case_loadsign_through
tap_case "agent alive, exits 0, no sanitizer report" agent_exits_clean

# --- (c) max-clients-per-user in system mode ----------------------------------
U2=p11agent-t2
id "$U2" >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin "$U2" ||
	tap_bail "cannot create user $U2"
# $U2 reaches the system socket below $T; a per-user agent refuses a socket
# directory open to others, so $T is 0711 only while the system agent runs
chmod 0711 "$T"
SYS=$T/sys
mkdir -m 0755 "$SYS"
printf '[agent]\nallow-users = %s\nmax-clients = 16\nmax-clients-per-user = 4\n' "$U2" \
	>"$T/c.conf"
IT_AGENT_ARGS=(--system --config "$T/c.conf")
SOCK=$SYS/agent.sock
write_cnf "$P/openssl.cnf"
chmod a+r "$P/openssl.cnf"
CNF=$P/openssl.cnf
agent_start || tap_bail "p11agentd --system did not start"

# A long-lived signer of root's, idle once it has signed: closed to make
# room for root's flood, it must sign again without an error.
coproc HOLD { exec env OPENSSL_CONF="$CNF" ${IT_PRELOAD:+LD_PRELOAD="$IT_PRELOAD"} \
	timeout 120 "$P11AGENT_HOLDSIGN" "$(uri p256)" 2>"$T/holdsign.err"; }
IT_BG_PIDS+=("$HOLD_PID")
read -r -t 30 HOLD_LOADED <&"${HOLD[0]}"
[ "$HOLD_LOADED" = loaded ] || tap_bail "holdsign did not load the key: $(cat "$T/holdsign.err")"
# hold_end: release holdsign (EOF on its stdin); it must exit 0
hold_end() {
	local st=0 pid=${HOLD_PID:-}
	[ -n "$pid" ] || { IT_AGENT_BAD+=("holdsign ended before it was released"); return; }
	exec {HOLD[1]}>&-
	wait "$pid" || st=$?
	[ "$st" -eq 0 ] || IT_AGENT_BAD+=("holdsign (pid $HOLD_PID) ended with status $st")
}

hold_sign() {
	local line
	echo sign >&"${HOLD[1]}" || return 1
	read -r -t 30 line <&"${HOLD[0]}" || { echo "holdsign did not answer" >&2; return 1; }
	echo "holdsign: $line"
	[ "$line" = ok ]
}

case_per_user() {
	local rc=0 uid2
	uid2=$(id -u "$U2")
	hold_sign || return 1
	sleep 1.1
	flood call 10 percall 60 || return 1
	[ "$(field "$T/percall.ready" open)" -eq 4 ] ||
		{ echo "uid 0 holds $(field "$T/percall.ready" open) connections, max-clients-per-user is 4" >&2; rc=1; }
	grep -q "closed a connection: uid 0 .*max-clients-per-user (4) reached" "$T/agent.log" ||
		{ echo "no log line naming max-clients-per-user" >&2; rc=1; }
	# the first one closed: the signer, idle the longest
	grep -q "closed a connection: uid 0 (pid [0-9]*, [^)]*holdsign) idle for" "$T/agent.log" ||
		{ echo "holdsign's idle connection was not the one closed" >&2; rc=1; }
	with_timeout "$IT_TIMEOUT" runuser -u "$U2" -- env OPENSSL_CONF="$CNF" \
		${IT_PRELOAD:+LD_PRELOAD="$IT_PRELOAD"} openssl pkeyutl -sign -inkey "$(uri p256)" \
		-in "$P/msg.sha256" -out "$O/u2.sig" ||
		{ echo "uid $uid2 could not sign while uid 0 was at its limit" >&2; rc=1; }
	plain pkeyutl -verify -pubin -inkey "$P/p256.pub" -in "$P/msg.sha256" -sigfile "$O/u2.sig" ||
		rc=1
	# root's own real clients still get in (closing root's idle ones) ...
	real_sign root || rc=1
	# ... and root's signer, closed while idle, signs again
	hold_sign || rc=1
	flood_end percall "$FLOOD_PID" || rc=1
	agent_alive || { echo "the agent died" >&2; rc=1; }
	return "$rc"
}
tap_case "system mode: uid 0 over max-clients-per-user = 4 loses its idle connections (logged), $U2 and root's real clients sign" \
	case_per_user
hold_end
tap_case "agent alive, exits 0, no sanitizer report" agent_exits_clean

# --- (d) client-idle-timeout ----------------------------------------------------
printf '[agent]\nclient-idle-timeout = 1\n' >"$T/d.conf"
IT_AGENT_ARGS=(--config "$T/d.conf")
SOCK=$T/agent.sock
chmod 0700 "$T" # a per-user agent's socket directory again
write_cnf "$CNF"
agent_start || tap_bail "p11agentd did not start with client-idle-timeout"
coproc HOLD { exec env OPENSSL_CONF="$CNF" ${IT_PRELOAD:+LD_PRELOAD="$IT_PRELOAD"} \
	timeout 120 "$P11AGENT_HOLDSIGN" "$(uri p256)" 2>"$T/holdsign2.err"; }
IT_BG_PIDS+=("$HOLD_PID")
read -r -t 30 HOLD_LOADED <&"${HOLD[0]}"
[ "$HOLD_LOADED" = loaded ] || tap_bail "holdsign did not load the key: $(cat "$T/holdsign2.err")"

case_idle_timeout() {
	local busy idle
	hold_sign || return 1
	busy=$(agent_fds)
	sleep 2.5
	idle=$(agent_fds)
	echo "agent fds after a signature $busy, 2.5 s later $idle"
	[ "$idle" -lt "$busy" ] || { echo "the idle connection was not closed" >&2; return 1; }
	hold_sign
}
tap_case "client-idle-timeout = 1: an idle client is closed and signs again transparently" \
	case_idle_timeout
hold_end
tap_case "agent alive, exits 0, no sanitizer report" agent_exits_clean
tap_done
