# shellcheck shell=bash
# Shared by the integration tests (and tests/demo.sh). Source it, then call
# it_setup. Needs in the environment (meson sets them, see meson.build):
#   P11AGENTD    built agent/p11agentd
#   P11AGENTCTL  built agent/p11agentctl
#   P11AGENT_SO  built provider/p11agent.so
# Optional: P11AGENT_TEST_KEEP=1 keeps the temp dir (its path goes to stderr),
#           P11AGENT_TEST_TIMEOUT=seconds for each client/server (default 30).
#
# Everything that can block runs under timeout(1); the EXIT trap stops every
# process this file started (agent, servers) and removes the temp dir.
#
# End every script with tap_done: it runs it_finish, two more TAP cases
# that fail when an agent crashed, hung at exit or exited non-zero
# (agent_stop), died before agent_kill, or when any text file under $T
# (agent.log, other logs, client outputs) holds a sanitizer report. Start
# agents with agent_start, stop them with agent_stop (agent_kill for a
# deliberate SIGKILL); an agent started another way adds a line to
# IT_AGENT_BAD when it did not exit 0.

export LC_ALL=C
IT_LIB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
IT_TIMEOUT=${P11AGENT_TEST_TIMEOUT:-30}
# shellcheck disable=SC2034 # used by the test scripts
IT_KEYS="rsa2048 p256 p384 ed25519"
IT_BG_PIDS=()
IT_AGENT_ARGS=() # more p11agentd options for agent_start
AGENT_PID=""
T=""

# --- TAP ---------------------------------------------------------------
TAP_N=0
TAP_FAILED=0

tap_ok() {
	TAP_N=$((TAP_N + 1))
	echo "ok $TAP_N - $*"
}

# tap_not_ok DESC [FILE...]: a failed case; FILEs are shown as diagnostics.
tap_not_ok() {
	local desc=$1 f
	shift
	TAP_N=$((TAP_N + 1))
	TAP_FAILED=$((TAP_FAILED + 1))
	echo "not ok $TAP_N - $desc"
	for f in "$@"; do
		[ -s "$f" ] || continue
		echo "# --- $(basename "$f") (last 40 lines)"
		tail -n 40 "$f" | sed 's/^/#   /'
	done
}

tap_diag() { sed 's/^/# /'; }

# tap_case DESC FUNC [ARGS...]: run FUNC ARGS, its stdout and stderr go to
# a log shown (with the agent log) when it fails. FUNC returns 0 for a pass.
tap_case() {
	local desc=$1 log
	shift
	log=$T/case-$((TAP_N + 1)).log
	if "$@" >"$log" 2>&1; then
		tap_ok "$desc"
	else
		tap_not_ok "$desc" "$log" "$T/agent.log"
	fi
}

tap_bail() {
	echo "Bail out! $*"
	exit 1
}

# tap_done: the end of every script. Runs it_finish (the agent exits 0, no
# sanitizer report), prints the plan and exits 0 only if every case passed.
tap_done() {
	it_finish
	echo "1..$TAP_N"
	[ "$TAP_FAILED" -eq 0 ] && [ "$TAP_N" -gt 0 ]
	exit $?
}

# --- processes ---------------------------------------------------------
with_timeout() {
	local secs=$1
	shift
	timeout -k 2 "$secs" "$@"
}

# stop_pid PID [SECONDS]: SIGTERM, up to SECONDS (default 5), then SIGKILL.
# Returns the exit status (137 when it had to be killed).
stop_pid() {
	local pid=$1 limit=${2:-5} i
	[ -n "$pid" ] || return 0
	kill -TERM "$pid" 2>/dev/null || true
	for ((i = 0; i < limit * 10; i++)); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	kill -KILL "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null
}

# stop_checked PID WHAT [STATUS...]: stop_pid, then 0 only if PID ended
# with one of STATUS (default 0 and 143: it ended by itself, or on the
# SIGTERM); otherwise says on stderr how WHAT ended and returns 1. A
# process that had to be SIGKILLed (137) or died of another signal fails.
# The status is left in STOP_STATUS.
STOP_STATUS=0
stop_checked() {
	local pid=$1 what=$2 s
	shift 2
	[ $# -gt 0 ] || set -- 0 143
	STOP_STATUS=0
	stop_pid "$pid" || STOP_STATUS=$?
	for s in "$@"; do
		[ "$STOP_STATUS" -ne "$s" ] || return 0
	done
	echo "$what (pid $pid) ended with status $STOP_STATUS" >&2
	return 1
}

# stop_at_end PID WHAT: stop_checked for a helper stopped after the last
# case (a private bus, a TPM daemon): a bad end fails it_finish's check.
stop_at_end() {
	stop_checked "$1" "$2" 2>/dev/null ||
		IT_AGENT_BAD+=("$2 (pid $1) ended with status $STOP_STATUS")
}

it_cleanup() {
	local pid
	trap - EXIT
	for pid in "${IT_BG_PIDS[@]}" $AGENT_PID; do
		kill -TERM "$pid" 2>/dev/null || true
	done
	sleep 0.1
	for pid in "${IT_BG_PIDS[@]}" $AGENT_PID; do
		kill -KILL "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
	done
	if [ -n "$T" ] && [ -d "$T" ]; then
		if [ "${P11AGENT_TEST_KEEP:-0}" = 1 ]; then
			echo "kept $T" >&2
		else
			rm -rf -- "$T"
		fi
	fi
}

# A loopback TCP port that was free a moment ago: random, below the
# ephemeral range (32768-60999 on Linux, so no client's source port takes
# it meanwhile), not bound by any socket in /proc/net/tcp{,6}. Callers
# retry on EADDRINUSE. (Plain bash: starting an interpreter for this cost
# 0.2 s per server.)
free_port() {
	local p i
	for ((i = 0; i < 50; i++)); do
		p=$((20000 + RANDOM % 12000))
		port_in_use "$p" || break
	done
	echo "$p"
}

# port_in_use PORT: some TCP socket (any state) has PORT as its local port.
port_in_use() {
	local hex
	hex=$(printf ':%04X' "$1")
	awk -v p="$hex" 'FNR > 1 && substr($2, length($2) - 4) == p { found = 1 }
		END { exit !found }' /proc/net/tcp /proc/net/tcp6 2>/dev/null
}

# --- setup -------------------------------------------------------------
# it_setup: temp dir, token (mktoken.sh), openssl.cnf for clients. Sets T,
# SOCK, MODULE, CNF, and everything in $T/env. Bails out on failure.
it_setup() {
	local v tool
	for v in P11AGENTD P11AGENTCTL P11AGENT_SO; do
		[ -n "${!v:-}" ] || tap_bail "$v is not set (run through meson test)"
	done
	[ -x "$P11AGENTD" ] || tap_bail "agent not built: $P11AGENTD"
	[ -x "$P11AGENTCTL" ] || tap_bail "p11agentctl not built: $P11AGENTCTL"
	[ -f "$P11AGENT_SO" ] || tap_bail "provider not built: $P11AGENT_SO"
	for tool in openssl pkcs11-tool softhsm2-util timeout xxd; do
		command -v "$tool" >/dev/null || tap_bail "$tool not installed"
	done

	T=$(mktemp -d "${TMPDIR:-/tmp}/p11agent-it.XXXXXX") || tap_bail "mktemp failed"
	# unix socket paths are limited to 107 bytes
	if [ ${#T} -gt 80 ]; then
		rm -rf -- "$T"
		T=$(mktemp -d /tmp/p11agent-it.XXXXXX) || tap_bail "mktemp failed"
	fi
	trap it_cleanup EXIT
	trap 'exit 130' INT TERM HUP

	"$IT_LIB_DIR/mktoken.sh" "$T" >"$T/mktoken.log" 2>&1 || {
		tap_diag <"$T/mktoken.log"
		tap_bail "mktoken.sh failed"
	}
	set -a
	# shellcheck disable=SC1091
	. "$T/env"
	set +a
	MODULE=$P11AGENT_TEST_MODULE
	SOCK=$T/agent.sock

	# Keep the tests away from the user's own agent, config and bus; the
	# only socket is the one passed explicitly.
	unset P11AGENT_SOCKET OPENSSL_CONF OPENSSL_MODULES DBUS_SESSION_BUS_ADDRESS
	mkdir -m 0700 -p "$T/run" "$T/config"
	export XDG_RUNTIME_DIR=$T/run XDG_CONFIG_HOME=$T/config

	CNF=$T/openssl.cnf
	write_cnf "$CNF"

	# An ASan/UBSan-built provider is dlopen()ed by the uninstrumented
	# openssl(1): the ASan runtime has to be preloaded into those clients.
	IT_PRELOAD=$(ldd "$P11AGENT_SO" 2>/dev/null | awk '/libasan\.so/ { print $3; exit }')
}

# write_cnf FILE [EXTRA]: the client openssl.cnf loading default + p11agent.
# EXTRA lines go into the openssl_init section (e.g. alg_section = ...).
write_cnf() {
	cat >"$1" <<EOF
openssl_conf = openssl_init
[openssl_init]
providers = provider_sect
${2:-}
[provider_sect]
default = default_sect
p11agent = p11agent_sect
[default_sect]
activate = 1
[p11agent_sect]
module = $P11AGENT_SO
agent-socket = $SOCK
activate = 1
EOF
}

# --- agent -------------------------------------------------------------
# agent_start [PIN_FILE]: start p11agentd on $SOCK and wait (bounded) until
# it listens. A socket file left by a killed agent stays in place: the new
# agent must replace it, and is ready once `p11agentctl status` answers. The
# agent runs without OPENSSL_CONF, unless IT_AGENT_CNF names one for it.
# IT_AGENT_REGISTRY=1: no --module (the modules registered with p11-kit).
agent_start() {
	local pinfile=${1:-$T/pin} i limit=50 stale=0 envcmd=(env -u OPENSSL_CONF)
	local mod=(--module "$MODULE")
	[ -z "${IT_AGENT_REGISTRY:-}" ] || mod=()
	[ -n "$IT_PRELOAD" ] && limit=150
	# every registered module loads (OpenSC, p11-kit-trust, ...): slower
	[ -z "${IT_AGENT_REGISTRY:-}" ] || limit=$((limit * 4))
	[ -z "${IT_AGENT_CNF:-}" ] || envcmd=(env OPENSSL_CONF="$IT_AGENT_CNF")
	[ -S "$SOCK" ] && stale=1
	echo "=== agent start $(date +%T) pin-source file:$pinfile" >>"$T/agent.log"
	# SoftHSM's own leak (EdDSA) is suppressed in the agent, ours are not;
	# the suppression needs full unwinding (libcrypto has no frame pointers).
	envcmd+=(ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}fast_unwind_on_malloc=0"
		LSAN_OPTIONS="suppressions=$IT_LIB_DIR/../unit/lsan-softhsm.supp")
	"${envcmd[@]}" "$P11AGENTD" --foreground "${mod[@]}" --socket "$SOCK" \
		--pin-source "file:$pinfile" "${IT_AGENT_ARGS[@]}" 2>>"$T/agent.log" </dev/null &
	AGENT_PID=$!
	for ((i = 0; i < limit; i++)); do
		if [ "$stale" -eq 0 ]; then
			[ -S "$SOCK" ] && break
		elif with_timeout 5 "$P11AGENTCTL" --socket "$SOCK" status >/dev/null 2>&1; then
			return 0
		fi
		if ! kill -0 "$AGENT_PID" 2>/dev/null; then
			wait "$AGENT_PID"
			echo "p11agentd exited with status $? before listening on $SOCK" >&2
			tail -n 20 "$T/agent.log" >&2
			AGENT_PID=""
			return 1
		fi
		sleep 0.1
	done
	if [ "$i" -ge "$limit" ]; then
		if [ "$stale" -eq 1 ]; then
			echo "p11agentd did not take over the stale socket $SOCK within $((limit / 10)) s" >&2
		else
			echo "p11agentd did not create $SOCK within $((limit / 10)) s" >&2
		fi
		tail -n 20 "$T/agent.log" >&2
		return 1
	fi
	# The socket exists once bound; give listen() a moment by asking.
	for ((i = 0; i < 20; i++)); do
		with_timeout 5 "$P11AGENTCTL" --socket "$SOCK" status >/dev/null 2>&1 && break
		sleep 0.1
	done
	return 0
}

# agent_stop: SIGTERM and wait (10 s, 30 s under ASan, then SIGKILL).
# Returns the agent's exit status. Every agent stopped here must exit 0:
# a status other than 0 (a crash, a hang at exit, a sanitizer's exit code),
# or an agent that had died before, is remembered and it_finish fails.
agent_stop() {
	local rc=0 alive=1 limit=10
	[ -n "$AGENT_PID" ] || return 0
	[ -z "$IT_PRELOAD" ] || limit=30
	kill -0 "$AGENT_PID" 2>/dev/null || alive=0
	stop_pid "$AGENT_PID" "$limit" || rc=$?
	if [ "$alive" -eq 0 ]; then
		IT_AGENT_BAD+=("agent pid $AGENT_PID had exited (status $rc) before agent_stop")
		[ "$rc" -ne 0 ] || rc=1
	elif [ "$rc" -ne 0 ]; then
		IT_AGENT_BAD+=("agent pid $AGENT_PID exited with status $rc on SIGTERM")
	fi
	echo "=== agent stopped, status $rc$([ "$alive" -eq 1 ] || echo ' (was dead already)')" \
		>>"$T/agent.log"
	AGENT_PID=""
	IT_AGENT_STOPS=$((IT_AGENT_STOPS + 1))
	return "$rc"
}

# agent_hup: SIGHUP to the agent, then wait (bounded: 10 s) until it logged
# the outcome of the reload, "reloaded" or "reload refused" (callers that
# need one of them check the log). 1 when nothing was logged in time.
agent_hup() {
	local before i
	before=$(grep -c "reloaded \|reload refused" "$T/agent.log")
	kill -HUP "$AGENT_PID" || return 1
	for ((i = 0; i < 100; i++)); do
		[ "$(grep -c "reloaded \|reload refused" "$T/agent.log")" -gt "$before" ] && return 0
		sleep 0.1
	done
	echo "the agent logged no reload outcome within 10 s" >&2
	return 1
}

# agent_kill: SIGKILL on purpose (not a failure), but the agent must have
# been alive until then.
agent_kill() {
	local rc=0
	[ -n "$AGENT_PID" ] || return 0
	if ! kill -KILL "$AGENT_PID" 2>/dev/null; then
		wait "$AGENT_PID" 2>/dev/null || rc=$?
		IT_AGENT_BAD+=("agent pid $AGENT_PID had exited (status $rc) before agent_kill")
	fi
	wait "$AGENT_PID" 2>/dev/null
	AGENT_PID=""
	echo "=== agent killed (SIGKILL)" >>"$T/agent.log"
}

# --- the end of every script -------------------------------------------
IT_AGENT_BAD=()  # why an agent (agent_stop, agent_kill) or a helper (stop_at_end) did not end well
IT_AGENT_STOPS=0
IT_FINISHED=0
# Sanitizer reports (ASan, LSan, UBSan, TSan) as they start.
IT_SANITIZER_RE='ERROR: (Address|Leak|Memory|Thread)Sanitizer|WARNING: ThreadSanitizer|runtime error:|SUMMARY: [A-Za-z]*Sanitizer'

# it_finish: what every script ends with (tap_done calls it; call it
# yourself only to add the cases before more output). Two TAP cases:
#  - "the agent exits 0": an agent still running is alive and exits 0 on
#    SIGTERM (agent_stop), and every agent stopped before exited 0 (see
#    agent_stop, agent_kill); a script that started its agents otherwise
#    (systemd-socket-activate, dbus) adds a message to IT_AGENT_BAD for
#    each that did not end with status 0;
#  - "no sanitizer report": no text file under $T (agent.log, every other
#    agent's log, the clients' outputs kept there) holds a sanitizer report.
it_finish() {
	local bad f
	[ "$IT_FINISHED" -eq 0 ] || return 0
	IT_FINISHED=1
	[ -n "$T" ] && [ -d "$T" ] || return 0
	if [ -n "$AGENT_PID" ] || [ "$IT_AGENT_STOPS" -gt 0 ] || [ "${#IT_AGENT_BAD[@]}" -gt 0 ]; then
		agent_stop >/dev/null 2>&1
		if [ "${#IT_AGENT_BAD[@]}" -eq 0 ]; then
			tap_ok "end: every agent was alive until stopped and exited 0 on SIGTERM ($IT_AGENT_STOPS)"
		else
			printf '%s\n' "${IT_AGENT_BAD[@]}" >"$T/agent-exits.txt"
			tap_not_ok "end: every agent was alive until stopped and exited 0 on SIGTERM" \
				"$T/agent-exits.txt" "$T/agent.log"
		fi
	fi
	bad=$(grep -rIlE "$IT_SANITIZER_RE" "$T" 2>/dev/null)
	if [ -z "$bad" ]; then
		tap_ok "end: no sanitizer report in the agent's log or any other output"
	else
		: >"$T/sanitizer.txt"
		for f in $bad; do
			{ echo "== $f"; grep -E -A 12 "$IT_SANITIZER_RE" "$f" | head -n 40; } >>"$T/sanitizer.txt"
		done
		tap_not_ok "end: no sanitizer report in the agent's log or any other output" "$T/sanitizer.txt"
	fi
}

# agent_signatures: print N from the "signatures: N" line of
# `p11agentctl --socket SOCK status`.
agent_signatures() {
	local out n
	out=$(with_timeout 10 "$P11AGENTCTL" --socket "$SOCK" status 2>&1)
	n=$(sed -n 's/^signatures:[[:space:]]*\([0-9][0-9]*\)[[:space:]]*$/\1/p' <<<"$out" | head -n 1)
	if [ -z "$n" ]; then
		echo "p11agentctl status gave no 'signatures: N' line:" >&2
		echo "$out" >&2
		return 1
	fi
	echo "$n"
}

# --- clients -----------------------------------------------------------
uri() { echo "pkcs11:token=$P11AGENT_TEST_TOKEN;object=$1;type=private"; }

# client ARGS...: openssl(1) with the p11agent openssl.cnf, bounded.
client() {
	with_timeout "$IT_TIMEOUT" env OPENSSL_CONF="${IT_CNF:-$CNF}" \
		${IT_PRELOAD:+LD_PRELOAD="$IT_PRELOAD"} openssl "$@"
}

# plain ARGS...: openssl(1) with the default provider only, bounded.
plain() {
	with_timeout "$IT_TIMEOUT" env OPENSSL_CONF=/dev/null openssl "$@"
}

# server_start DIR ARGS...: openssl s_server (software key, CA-verified
# client certificate required, one connection, -www status page) on a free
# loopback port. Sets SRV_PID and SRV_PORT.
server_start() {
	local dir=$1 try i
	shift
	for ((try = 0; try < 5; try++)); do
		SRV_PORT=$(free_port)
		# a server.out left by an earlier server in DIR already says ACCEPT
		rm -f "$dir/server.out" "$dir/server.err"
		# timeout(1) itself, not the with_timeout function: SRV_PID must
		# be timeout's pid (it passes SIGTERM on to s_server); a
		# function in the background is a subshell, and killing it
		# left s_server running until its timeout.
		timeout -k 2 "$IT_TIMEOUT" env OPENSSL_CONF=/dev/null openssl s_server \
			-accept "127.0.0.1:$SRV_PORT" -naccept 1 -www \
			-cert "$T/server.pem" -key "$T/server.key" -CAfile "$T/ca.pem" \
			-Verify 1 -verify_return_error "$@" \
			>"$dir/server.out" 2>"$dir/server.err" </dev/null &
		SRV_PID=$!
		IT_BG_PIDS+=("$SRV_PID")
		for ((i = 0; i < 100; i++)); do
			grep -q '^ACCEPT' "$dir/server.out" 2>/dev/null && return 0
			kill -0 "$SRV_PID" 2>/dev/null || break
			sleep 0.05
		done
		stop_pid "$SRV_PID" || true
		grep -qi 'in use' "$dir/server.err" || break
	done
	echo "s_server did not start:" >&2
	cat "$dir/server.err" >&2
	return 1
}

# mtls DIR KEY CERT PROTO [SIGALGS]: one mutual-TLS handshake plus an HTTP
# request for s_server's status page. PROTO is tls1_2 or tls1_3; SIGALGS
# restricts the client's CertificateVerify (-client_sigalgs on both ends).
# Returns the client's exit status; output in DIR/{client,server}.{out,err}
# and the server's page (its view of the connection) in DIR/page.
mtls() {
	local dir=$1 key=$2 cert=$3 proto=$4 sigalgs=${5:-} rc=0 cpid fd
	mkdir -p "$dir"
	: >"$dir/page"
	rm -f "$dir/in"
	mkfifo "$dir/in" || return 1
	server_start "$dir" "-$proto" ${sigalgs:+-client_sigalgs "$sigalgs"} || return 1
	client s_client -connect "127.0.0.1:$SRV_PORT" \
		-servername localhost -CAfile "$T/ca.pem" -verify_return_error \
		"-$proto" -cert "$cert" -key "$key" ${sigalgs:+-client_sigalgs "$sigalgs"} \
		-brief -ign_eof <"$dir/in" >"$dir/client.out" 2>"$dir/client.err" &
	cpid=$!
	exec {fd}>"$dir/in"
	# Send the request only once the client has finished its handshake
	# (-brief prints CONNECTION ESTABLISHED then; it also keeps session
	# dumps out of stdout, which then holds only the server's page).
	while kill -0 "$cpid" 2>/dev/null; do
		if grep -q '^CONNECTION ESTABLISHED' "$dir/client.err" 2>/dev/null; then
			# the client may exit meanwhile: EPIPE, not a SIGPIPE that
			# kills the test script
			(trap '' PIPE; printf 'GET / HTTP/1.0\r\n\r\n' >&"$fd") 2>/dev/null || true
			break
		fi
		sleep 0.05
	done
	wait "$cpid" || rc=$?
	exec {fd}>&-
	stop_pid "$SRV_PID" || true
	sed -n '/^HTTP\/1.0 200 ok/,$p' "$dir/client.out" >"$dir/page"
	return "$rc"
}

# mtls_accepted DIR CN PROTO_NAME SIGTYPE: the server's page shows a
# verified client certificate with CN, the protocol (TLSv1.3/TLSv1.2) and
# the client's signature type as the server saw it (RSA-PSS, RSA, ECDSA,
# ed25519). Explains on stderr what is missing.
mtls_accepted() {
	local dir=$1 cn=$2 proto=$3 sigtype=$4 ok=0
	if ! grep -q '^HTTP/1.0 200 ok' "$dir/page"; then
		echo "no response from s_server; client and server said:" >&2
		tail -n 15 "$dir/client.err" "$dir/server.err" >&2
		return 1
	fi
	grep -q '^Client certificate' "$dir/page" ||
		{ echo "server saw no client certificate" >&2; ok=1; }
	grep -Eq "^ +Subject: .*CN ?= ?$cn\$" "$dir/page" ||
		{ echo "client certificate subject is not CN=$cn" >&2; ok=1; }
	grep -q 'Verify return code: 0 (ok)' "$dir/page" ||
		{ echo "server did not verify the client certificate" >&2; ok=1; }
	grep -Eq "^ +Protocol +: $proto\$" "$dir/page" ||
		{ echo "protocol is not $proto" >&2; ok=1; }
	grep -q "^Peer signature type: $sigtype\$" "$dir/page" ||
		{ echo "client signature type is not $sigtype:" >&2
		  grep '^Peer sig' "$dir/page" >&2; ok=1; }
	[ "$ok" -eq 0 ] || tail -n 15 "$dir/client.err" "$dir/server.err" >&2
	return "$ok"
}

# The expected signature type in the server's view for a key label.
sigtype_of() {
	case $1 in
	*rsa*) echo RSA-PSS ;;
	*ed25519*) echo ed25519 ;;
	*) echo ECDSA ;;
	esac
}
