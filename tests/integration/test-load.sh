#!/bin/bash
# Load and robustness (issue 5): many processes and threads signing through
# the provider at once (loadsign verifies every signature), the agent's
# memory and descriptors across load, an agent SIGKILLed and restarted under
# load, a flood of connections past max-clients, and a client killed in the
# middle of its requests.
#
# Durations are short (a few seconds per phase) and shorter still in the
# ASan build (detected from IT_PRELOAD); P11AGENT_LOAD_SECONDS overrides.
# The figures (signatures/s, RSS, fds, failures) are TAP diagnostics.
. "$(dirname "$0")/lib.sh"

it_setup
[ -x "${LOADSIGN:-}" ] || tap_bail "loadsign not built: ${LOADSIGN:-LOADSIGN unset}"
command -v python3 >/dev/null || tap_bail "python3 not installed"

if [ -n "$IT_PRELOAD" ]; then
	SECS=${P11AGENT_LOAD_SECONDS:-2}
	# ASan's quarantine keeps freed memory (tens of MiB after a load): the
	# RSS is only reported; LeakSanitizer checks the agent when it exits
	# (the last case).
	RSS_MARGIN_KB=""
else
	SECS=${P11AGENT_LOAD_SECONDS:-4}
	RSS_MARGIN_KB=$((2 * 1024))
fi
P=4
TH=4
LS_TIMEOUT=$((SECS * 3 + 60))

# --- helpers -------------------------------------------------------------
# agent_proc FIELD: VmRSS (kB) or Threads of the agent, from /proc.
agent_proc() { awk -v f="$1:" '$1 == f { print $2 }' "/proc/$AGENT_PID/status"; }
agent_fds() { find "/proc/$AGENT_PID/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l; }

# status_field NAME: N from "NAME: N" of p11agentctl status.
status_field() {
	with_timeout 10 "$P11AGENTCTL" --socket "$SOCK" status 2>/dev/null |
		sed -n "s/^$1:[[:space:]]*\([0-9][0-9]*\)[[:space:]]*\$/\1/p"
}

# wait_idle: until the agent serves no client but the asking p11agentctl
# (clients: 1), and its fd and thread counts have stopped falling (the
# thread of that p11agentctl ends just after it exits). Bounded: 15 s.
wait_idle() {
	local i n prev="" cur same
	for ((i = 0; i < 150; i++)); do
		n=$(status_field clients)
		[ "$n" = 1 ] && break
		sleep 0.1
	done
	[ "$n" = 1 ] || { echo "agent still has clients: ${n:-no answer}" >&2; return 1; }
	# three equal samples 100 ms apart
	for ((i = 0, same = 0; i < 50 && same < 2; i++)); do
		sleep 0.1
		cur="$(agent_fds) $(agent_proc Threads)"
		if [ "$cur" = "$prev" ]; then same=$((same + 1)); else same=0; fi
		prev=$cur
	done
	return 0
}

# snapshot: the agent's VmRSS (kB), open fds and threads, on one line.
snapshot() { echo "$(agent_proc VmRSS) $(agent_fds) $(agent_proc Threads)"; }

# loadsign OUT ARGS...: run the load client against $SOCK, bounded.
loadsign() {
	local out=$1
	shift
	with_timeout "$LS_TIMEOUT" env P11AGENT_SOCKET="$SOCK" "$LOADSIGN" "$@" >"$out" 2>&1
}

# lsf FILE NAME: NAME's value on loadsign's summary line (rate without /s).
lsf() {
	grep '^loadsign: ok=' "$1" | tail -n 1 | tr ' ' '\n' | sed -n "s#^$2=\([0-9.]*\).*#\1#p"
}

# check_run FILE MAX_FAILED: the summary line exists, nothing failed to
# verify, no process died, failures <= MAX_FAILED.
check_run() {
	local f=$1 max=$2 ok
	ok=$(lsf "$f" ok)
	[ -n "$ok" ] || { echo "no summary line from loadsign:" >&2; cat "$f" >&2; return 1; }
	[ "$(lsf "$f" verify_failed)" -eq 0 ] ||
		{ echo "signatures that do not verify:" >&2; cat "$f" >&2; return 1; }
	[ "$(lsf "$f" procs_failed)" -eq 0 ] ||
		{ echo "a loadsign process died:" >&2; cat "$f" >&2; return 1; }
	[ "$(lsf "$f" failed)" -le "$max" ] ||
		{ echo "more than $max failed signatures:" >&2; cat "$f" >&2; return 1; }
	[ "$ok" -gt 0 ] || { echo "no signature at all" >&2; cat "$f" >&2; return 1; }
}

# --- (a) steady load: nothing lost, nothing leaks ----------------------------
agent_start || tap_bail "p11agentd did not start"

# loaded KEY SECONDS [PROCS THREADS]: a PROCS x THREADS (default P x TH)
# load on KEY, then zero failures, every signature verified with
# pub/KEY.pem, and the agent counted exactly what loadsign got.
loaded() {
	local k=$1 secs=$2 procs=${3:-$P} threads=${4:-$TH} before after out=$T/load-$1.out
	before=$(agent_signatures) || return 1
	loadsign "$out" --key "$(uri "$k")" --pubkey "$T/pub/$k.pem" --procs "$procs" \
		--threads "$threads" --seconds "$secs"
	cat "$out"
	check_run "$out" 0 || return 1
	after=$(agent_signatures) || return 1
	[ $((after - before)) -eq "$(lsf "$out" ok)" ] || {
		echo "agent counted $((after - before)) signatures, loadsign $(lsf "$out" ok)" >&2
		return 1
	}
}

# The first run grows the allocator's arenas and the thread stack cache: a
# warm-up, not measured.
tap_case "warm-up: P-256, $P processes x $TH threads" loaded p256 1
before_rss="" before_fds="" before_threads=""
wait_idle && read -r before_rss before_fds before_threads < <(snapshot)

tap_case "P-256, $P x $TH threads for ${SECS}s: none failed, all verified, agent count matches" \
	loaded p256 "$SECS"
echo "# p256 ${P}x${TH}: $(grep '^loadsign: ok=' "$T/load-p256.out")"
tap_case "RSA-2048, $P x $TH threads for $((SECS / 2 + 1))s: none failed, all verified" \
	loaded rsa2048 $((SECS / 2 + 1))
echo "# rsa2048 ${P}x${TH}: $(grep '^loadsign: ok=' "$T/load-rsa2048.out")"

no_growth() {
	wait_idle || return 1
	read -r after_rss after_fds after_threads < <(snapshot)
	echo "rss before=${before_rss} kB after=${after_rss} kB; fds before=$before_fds after=$after_fds; threads before=$before_threads after=$after_threads"
	[ "$after_fds" -eq "$before_fds" ] ||
		{ echo "open fds changed: $before_fds -> $after_fds" >&2; ls -l "/proc/$AGENT_PID/fd" >&2; return 1; }
	[ "$after_threads" -eq "$before_threads" ] ||
		{ echo "threads changed: $before_threads -> $after_threads" >&2; return 1; }
	[ -z "$RSS_MARGIN_KB" ] || [ "$after_rss" -le $((before_rss + RSS_MARGIN_KB)) ] ||
		{ echo "RSS grew by $((after_rss - before_rss)) kB (> $RSS_MARGIN_KB kB)" >&2; return 1; }
}
if [ -n "$RSS_MARGIN_KB" ]; then
	tap_case "agent after the load: same fds and threads, RSS within +$((RSS_MARGIN_KB / 1024)) MiB" \
		no_growth
else
	tap_case "agent after the load: same fds and threads (ASan: RSS reported, leaks checked at exit)" \
		no_growth
fi
echo "# rss before=${before_rss:-?} after=${after_rss:-?} kB; fds before=${before_fds:-?} after=${after_fds:-?}; threads before=${before_threads:-?} after=${after_threads:-?}"

# --- (b) agent SIGKILLed and restarted under load ---------------------------
# Two restarts during one run. A restart may cost the calls in flight: at
# most one per thread per restart. Each agent signs 200 times under the load
# before it is killed, and the last one 200 times before the load stops.
restarted() {
	local out=$T/restart.out lpid i k n base rc=0 kills=2 bound after
	base=$(agent_signatures) || return 1
	rm -f "$T/restart.stop"
	loadsign "$out" --key "$(uri p256)" --pubkey "$T/pub/p256.pem" --procs "$P" \
		--threads "$TH" --seconds 60 --stop-file "$T/restart.stop" \
		--max-failures $((P * TH * kills)) &
	lpid=$!
	for ((k = 0; k <= kills; k++)); do
		# wait until this agent has signed 200 times under the load
		for ((i = 0; i < 400; i++)); do
			n=$(status_field signatures)
			[ "${n:-0}" -ge $((base + 200)) ] && break
			sleep 0.05
		done
		[ "${n:-0}" -ge $((base + 200)) ] ||
			{ echo "agent $k signed only $((${n:-0} - base)) times" >&2; rc=1; }
		echo "agent $k: $((${n:-0} - base)) signatures under the load"
		[ "$k" -lt "$kills" ] || break
		agent_kill
		agent_start || { echo "restart $k failed" >&2; rc=1; break; }
		base=0
	done
	touch "$T/restart.stop"
	wait "$lpid" || true
	cat "$out"
	after=$(agent_signatures) || return 1
	echo "last agent signed $after"
	RESTART_SUMMARY="failed=$(lsf "$out" failed) ok=$(lsf "$out" ok) last-agent-signatures=$after"
	[ "$rc" -eq 0 ] || return 1
	bound=$((P * TH * kills))
	check_run "$out" "$bound"
}
RESTART_SUMMARY="?"
tap_case "agent SIGKILLed and restarted twice under $P x $TH load: clients recover, failures <= $((P * TH * 2))" \
	restarted
echo "# restarts: $RESTART_SUMMARY"

# --- (c) connection flood past max-clients; a client killed mid-run ---------
# The flood's connections each make one call (a connection becomes a client
# with its first call): past max-clients the agent closes the longest-idle
# client to make room; the signing client, whose connections are busy, loses
# nothing (an idle one closed reconnects transparently).
agent_stop >/dev/null 2>&1
printf '[agent]\nmax-clients = 8\n' >"$T/flood.conf"
# shellcheck disable=SC2034 # read by agent_start
IT_AGENT_ARGS=(--config "$T/flood.conf")
agent_start || tap_bail "p11agentd did not start with max-clients = 8"
base_rss="" base_fds="" base_threads=""
wait_idle && read -r base_rss base_fds base_threads < <(snapshot)

flood() {
	local out=$T/flood-load.out lpid i n existing ready=$T/flood.ready hpid rc=0
	local accepted refused
	rm -f "$ready" "$T/flood.release"
	# an existing client: 1 process x 2 threads (3 connections with the
	# parent's), signing through the flood
	loadsign "$out" --key "$(uri p256)" --pubkey "$T/pub/p256.pem" --procs 1 --threads 2 \
		--seconds $((SECS + 2)) &
	lpid=$!
	for ((i = 0; i < 100; i++)); do
		n=$(status_field clients)
		[ "${n:-0}" -ge 4 ] && break
		sleep 0.05
	done
	existing=$((${n:-1} - 1))
	echo "existing clients: $existing"
	python3 "$IT_LIB_DIR/holdconns.py" "$SOCK" 16 "$ready" "$T/flood.release" 60 call &
	hpid=$!
	IT_BG_PIDS+=("$hpid")
	for ((i = 0; i < 200; i++)); do
		[ -s "$ready" ] && break
		sleep 0.05
	done
	cat "$ready" 2>/dev/null || { echo "holdconns.py did not report" >&2; rc=1; }
	accepted=$(sed -n 's/.*accepted=\([0-9]*\).*/\1/p' "$ready" 2>/dev/null)
	refused=$(sed -n 's/.*refused=\([0-9]*\).*/\1/p' "$ready" 2>/dev/null)
	FLOOD_SUMMARY="existing=$existing accepted=${accepted:-?} refused=${refused:-?} of 16"
	# the agent's count while the flood is held (this p11agentctl included)
	n=$(status_field clients)
	echo "clients during the flood: ${n:-no answer}"
	wait "$lpid" || true
	touch "$T/flood.release"
	wait "$hpid" || rc=1
	cat "$out"
	[ "$rc" -eq 0 ] || return 1
	[ -n "$n" ] && [ "$n" -le 8 ] ||
		{ echo "the agent served ${n:-?} clients, max-clients is 8" >&2; return 1; }
	[ "$accepted" -ge 1 ] && [ "$accepted" -le 8 ] && [ "$refused" -eq $((16 - accepted)) ] ||
		{ echo "$accepted of 16 held: not what max-clients = 8 allows" >&2; return 1; }
	grep -q 'closed a connection: .*to make room .*max-clients (8) reached' "$T/agent.log" ||
		{ echo "no log line about the closed clients" >&2; return 1; }
	check_run "$out" 0
}
FLOOD_SUMMARY="?"
tap_case "16 clients past max-clients = 8: the longest idle closed and logged, existing client keeps signing" \
	flood
echo "# flood: $FLOOD_SUMMARY"

# back_to_base: no client left; fds and threads as before any client.
back_to_base() {
	wait_idle || return 1
	read -r now_rss now_fds now_threads < <(snapshot)
	echo "fds base=$base_fds now=$now_fds; threads base=$base_threads now=$now_threads; rss base=$base_rss now=$now_rss kB"
	[ "$now_fds" -eq "$base_fds" ] ||
		{ echo "fds: $base_fds -> $now_fds" >&2; ls -l "/proc/$AGENT_PID/fd" >&2; return 1; }
	[ "$now_threads" -eq "$base_threads" ] ||
		{ echo "threads: $base_threads -> $now_threads" >&2; return 1; }
}
tap_case "flood over: no client left, fds and threads back to baseline" back_to_base

killed_client() {
	local out=$T/killed.out lpid i n
	# exec: $! is loadsign itself (bounded by --seconds and the kill)
	(exec env P11AGENT_SOCKET="$SOCK" "$LOADSIGN" --key "$(uri rsa2048)" --procs 2 \
		--threads 3 --seconds 30 >"$out" 2>&1) &
	lpid=$!
	IT_BG_PIDS+=("$lpid")
	for ((i = 0; i < 100; i++)); do
		n=$(status_field signatures)
		[ "${n:-0}" -ge 50 ] && break
		sleep 0.05
	done
	[ "$(status_field clients)" -ge 3 ] || echo "few clients at the kill" >&2
	# loadsign's children die with it (PR_SET_PDEATHSIG), requests in flight
	kill -KILL "$lpid"
	wait "$lpid" 2>/dev/null || true
	back_to_base || return 1
	echo "after the kill: $(grep -c . "$out") lines of loadsign output, agent signed $(status_field signatures)"
	loaded p256 1 2 2
}
tap_case "loadsign SIGKILLed mid-run: agent frees its connections and keeps signing" killed_client
back_to_base >/dev/null 2>&1
echo "# after the killed client: fds base=${base_fds:-?} now=${now_fds:-?}; threads base=${base_threads:-?} now=${now_threads:-?}"

tap_case "agent exits with status 0 on SIGTERM" agent_stop

# --- (d) a slow token does not slow another token of the same agent -----------
# A second SoftHSM token, p11agent-slow, with a P-256 key. The agent loads
# SoftHSM through p11fault.so, which makes every C_Sign on the slow token
# sleep 200 ms. The fast token's signatures/s while 4 clients keep the slow
# token busy must stay near its rate without them (>= 50%), far above the
# 5/s a slow signature holding up the others would allow.
SLOW_MS=200
slow_setup() {
	local pin so
	pin=$(cat "$T/pin") so=$(cat "$T/so-pin")
	softhsm2-util --init-token --free --label p11agent-slow --pin "$pin" --so-pin "$so" &&
		pkcs11-tool --module "$P11AGENT_TEST_MODULE" --token-label p11agent-slow --login \
			--pin "$pin" --keypairgen --key-type EC:prime256v1 --id 11 --label slow256 \
			--usage-sign --sensitive
}
[ -f "${P11FAULT_SO:-}" ] || tap_bail "p11fault.so not built: ${P11FAULT_SO:-P11FAULT_SO unset}"
slow_setup >"$T/slow-setup.log" 2>&1 || { tap_diag <"$T/slow-setup.log"; tap_bail "cannot make the slow token"; }
echo "delay C_Sign $SLOW_MS token=p11agent-slow" >"$T/fault.control"
# No P11FAULT_STATE: writing the state file after every call would be
# most of the fast token's cost.
export P11FAULT_MODULE=$P11AGENT_TEST_MODULE P11FAULT_CONTROL=$T/fault.control
# shellcheck disable=SC2034 # read by agent_start
MODULE=$P11FAULT_SO IT_AGENT_ARGS=()
agent_start || tap_bail "p11agentd did not start with p11fault.so"
SLOW_URI="pkcs11:token=p11agent-slow;object=slow256;type=private"

# rate FILE: signatures/s on loadsign's summary line.
rate() { lsf "$1" rate; }

# slow_try N: fast token alone, then while 4 clients keep the slow token busy.
slow_try() {
	local alone=$T/fast-alone-$1.out busy=$T/fast-busy-$1.out slow=$T/slow-$1.out spid ra rb rs
	loadsign "$alone" --key "$(uri p256)" --pubkey "$T/pub/p256.pem" --procs 1 --threads 2 \
		--seconds "$SECS" || { cat "$alone"; return 2; }
	loadsign "$slow" --key "$SLOW_URI" --procs 1 --threads 4 --seconds $((SECS + 3)) &
	spid=$!
	sleep 1
	loadsign "$busy" --key "$(uri p256)" --pubkey "$T/pub/p256.pem" --procs 1 --threads 2 \
		--seconds "$SECS" || { cat "$busy"; wait "$spid"; return 2; }
	wait "$spid" || { cat "$slow"; return 2; }
	ra=$(rate "$alone") rb=$(rate "$busy") rs=$(rate "$slow")
	SLOW_SUMMARY="fast token alone ${ra}/s, while the slow token is busy ${rb}/s; slow token (${SLOW_MS} ms per C_Sign, 4 clients) ${rs}/s"
	echo "try $1: $SLOW_SUMMARY"
	check_run "$alone" 0 && check_run "$busy" 0 && check_run "$slow" 0 || return 2
	# the delay was in effect: 4 clients at 200 ms make at most 20/s
	[ "$rs" -le $((4 * 1000 / SLOW_MS + 2)) ] ||
		{ echo "the slow token signed ${rs}/s: was the delay applied?" >&2; return 2; }
	[ "$rb" -gt 5 ] && [ $((rb * 2)) -ge "$ra" ] ||
		{ echo "the slow token slowed the fast one: ${ra}/s -> ${rb}/s" >&2; return 1; }
}

# A slow token holding up the others would leave the fast one at <= 5/s on
# every try; other load on the machine can spoil one try: up to 3.
slow_token() {
	local try rc
	for try in 1 2 3; do
		rc=0
		slow_try "$try" || rc=$?
		[ "$rc" -eq 1 ] || return "$rc"
	done
	return 1
}
SLOW_SUMMARY="?"
tap_case "a slow token (${SLOW_MS} ms per C_Sign, busy) leaves another token's rate >= 50%" slow_token
echo "# slow token: $SLOW_SUMMARY"
tap_case "agent (two tokens through p11fault.so) exits with status 0 on SIGTERM" agent_stop
tap_done
