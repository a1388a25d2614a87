#!/bin/bash
# bench.sh [--seconds S] [--rounds N] [--runs N] [--soak N] [--many-keys] [--json PATH]
#          [--latency-delay MS] [--latency-long-delay MS] [--latency-max-sessions N]
#          [--only-latency]
#          [--algs LIST] [--only-sign] [--only-fresh] [--only-tls]
#
# Sets the stage for p11bench and runs it (see README.md, "Benchmarks"):
#   - a fresh SoftHSM token (tests/integration/mktoken.sh) in a temp dir;
#   - p11agentd on a temp socket, signing with that token;
#   - `p11-kit server` exporting the same token (for p11-kit-client.so), if
#     p11-kit's server and client module are installed;
#   - with --many-keys: 4 more SoftHSM tokens with 25 P-256 keys each and a
#     second agent serving them (memory measurement);
#   - an openssl.cnf loading p11agent.so, for `openssl pkeyutl`;
#   - the latency-bound profile: a third agent on p11fault.so (P11FAULT_SO)
#     over the same token, every C_Sign delayed by --latency-delay ms (5), a
#     network HSM; in-process workers load p11fault.so with the same delay.
#     The 64 clients are measured again with --latency-long-delay MS (4 x the
#     delay; 0: not): 64 clients at 5 ms ask more signatures of the token
#     than a small machine's CPUs make even in-process (p11bench rewrites
#     the control file for it).
#     --latency-max-sessions N gives that agent max-sessions = N (e.g. 4, the
#     pool's old fixed size, for a before/after comparison).
#     --only-latency measures only that; --only-fresh only the fresh
#     processes (p11bench-first and openssl pkeyutl -sign, section 2).
# Needs P11AGENTD, P11AGENTCTL, P11AGENT_SO, P11BENCH, P11BENCH_FIRST in the
# environment (meson benchmark and run.sh set them), and P11FAULT_SO for the
# latency-bound profile (without it, that section says unavailable). Everything it starts
# is stopped on exit; the temp dir is removed unless P11AGENT_TEST_KEEP=1.
# Exits with p11bench's status: non-zero if an operation failed or a
# signature did not verify, never because of a timing.
set -uo pipefail
export LC_ALL=C
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

SECONDS_EACH=3
RUNS=30
ROUNDS=3
SOAK=0
MANY=0
JSON=""
LAT_DELAY=5
LAT_MAX=""
LAT_LONG=""
ONLY=()
EXTRA=()
while [ $# -gt 0 ]; do
	case $1 in
	--seconds) SECONDS_EACH=$2; shift 2 ;;
	--runs) RUNS=$2; shift 2 ;;
	--rounds) ROUNDS=$2; shift 2 ;;
	--soak) SOAK=$2; shift 2 ;;
	--many-keys) MANY=1; shift ;;
	--no-many-keys) MANY=0; shift ;;
	--json) JSON=$2; shift 2 ;;
	--latency-delay) LAT_DELAY=$2; shift 2 ;;
	--latency-long-delay) LAT_LONG=$2; shift 2 ;;
	--latency-max-sessions) LAT_MAX=$2; shift 2 ;;
	--only-latency) ONLY=(--only latency); MANY=0; shift ;;
	--algs) EXTRA+=(--algs "$2"); shift 2 ;;
	--only-sign) ONLY=(--only sign); MANY=0; shift ;;
	--only-fresh) ONLY=(--only fresh); MANY=0; shift ;;
	--only-tls) ONLY=(--only tls); MANY=0; shift ;;
	*) echo "usage: bench.sh [--seconds S] [--rounds N] [--runs N] [--soak N] [--many-keys] [--json PATH] [--latency-delay MS] [--latency-long-delay MS] [--latency-max-sessions N] [--only-latency] [--algs LIST] [--only-sign] [--only-fresh] [--only-tls]" >&2
	   exit 2 ;;
	esac
done

die() { echo "bench.sh: $*" >&2; exit 1; }
for v in P11AGENTD P11AGENTCTL P11AGENT_SO P11BENCH P11BENCH_FIRST; do
	[ -n "${!v:-}" ] && [ -e "${!v}" ] || die "$v is not set or missing (run through meson or run.sh)"
done
for tool in openssl pkcs11-tool softhsm2-util timeout; do
	command -v "$tool" >/dev/null || die "$tool not installed"
done

T=$(mktemp -d /tmp/p11bench.XXXXXX) || die "mktemp failed"
PIDS=()
cleanup() {
	local pid
	for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
	sleep 0.2
	for pid in "${PIDS[@]}"; do
		kill -KILL "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
	done
	if [ "${P11AGENT_TEST_KEEP:-0}" = 1 ]; then echo "kept $T" >&2; else rm -rf -- "$T"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

unset P11AGENT_SOCKET OPENSSL_CONF OPENSSL_MODULES DBUS_SESSION_BUS_ADDRESS
mkdir -m 0700 -p "$T/run" "$T/config"
export XDG_RUNTIME_DIR=$T/run XDG_CONFIG_HOME=$T/config

echo "bench.sh: making the token" >&2
"$HERE/../integration/mktoken.sh" "$T/tok" >"$T/mktoken.log" 2>&1 ||
	{ cat "$T/mktoken.log" >&2; die "mktoken.sh failed"; }
set -a
# shellcheck disable=SC1091
. "$T/tok/env"
set +a

# agent_start SOCK LOG [SOFTHSM2_CONF [MODULE [AGENT_CONF]]]: p11agentd on SOCK;
# waits until it answers.
agent_start() {
	local sock=$1 log=$2 conf=${3:-$SOFTHSM2_CONF} module=${4:-$P11AGENT_TEST_MODULE} pid i
	local extra=()
	[ -z "${5:-}" ] || extra=(--config "$5")
	env -u OPENSSL_CONF SOFTHSM2_CONF="$conf" "$P11AGENTD" --foreground \
		--module "$module" --socket "$sock" "${extra[@]}" \
		--pin-source "file:$P11AGENT_TEST_PIN_FILE" 2>>"$log" </dev/null &
	pid=$!
	PIDS+=("$pid")
	for ((i = 0; i < 300; i++)); do
		timeout 5 "$P11AGENTCTL" --socket "$sock" status >/dev/null 2>&1 && return 0
		kill -0 "$pid" 2>/dev/null || { tail -n 20 "$log" >&2; die "p11agentd exited"; }
		sleep 0.1
	done
	tail -n 20 "$log" >&2
	die "p11agentd did not answer on $sock"
}

SOCK=$T/agent.sock
agent_start "$SOCK" "$T/agent.log"

# p11-kit remoting: `p11-kit server` exports the token on a unix socket;
# p11-kit-client.so (package p11-kit-modules) talks to it.
P11KIT_CLIENT=""
P11KIT_WHY=""
for m in "$(dpkg -L p11-kit-modules 2>/dev/null | grep '/p11-kit-client\.so$' | head -n 1)" \
	/usr/lib/*/pkcs11/p11-kit-client.so /usr/lib64/pkcs11/p11-kit-client.so; do
	if [ -n "$m" ] && [ -f "$m" ]; then P11KIT_CLIENT=$m; break; fi
done
if [ -z "$P11KIT_CLIENT" ]; then
	P11KIT_WHY="p11-kit-client.so not installed (Debian: apt-get install p11-kit-modules)"
elif ! p11-kit server --help >/dev/null 2>&1; then
	P11KIT_WHY="p11-kit has no 'server' command"
else
	p11-kit server -f -s --provider "$P11AGENT_TEST_MODULE" \
		"pkcs11:token=$P11AGENT_TEST_TOKEN" >"$T/p11kit.out" 2>"$T/p11kit.err" </dev/null &
	PIDS+=("$!")
	for ((i = 0; i < 50; i++)); do
		grep -q '^P11_KIT_SERVER_ADDRESS=' "$T/p11kit.out" 2>/dev/null && break
		sleep 0.1
	done
	addr=$(sed -n 's/^P11_KIT_SERVER_ADDRESS=\([^;]*\);.*/\1/p' "$T/p11kit.out")
	if [ -n "$addr" ]; then
		export P11_KIT_SERVER_ADDRESS=$addr
	else
		P11KIT_WHY="p11-kit server did not start: $(head -c 200 "$T/p11kit.err")"
	fi
fi

MEM_ARGS=()
if [ "$MANY" = 1 ]; then
	echo "bench.sh: 4 tokens with 25 P-256 keys each" >&2
	M=$T/many
	mkdir -p "$M/tokens"
	cat >"$M/softhsm2.conf" <<-EOF
		directories.tokendir = $M/tokens
		objectstore.backend = file
		log.level = ERROR
		slots.removable = false
	EOF
	PIN=$(cat "$P11AGENT_TEST_PIN_FILE")
	for t in 1 2 3 4; do
		SOFTHSM2_CONF=$M/softhsm2.conf softhsm2-util --init-token --free \
			--label "bench-many-$t" --pin "$PIN" --so-pin "$(cat "$P11AGENT_TEST_SO_PIN_FILE")" \
			>>"$M/log" 2>&1 || die "softhsm2-util failed"
		for k in $(seq 1 25); do
			SOFTHSM2_CONF=$M/softhsm2.conf pkcs11-tool --module "$P11AGENT_TEST_MODULE" \
				--token-label "bench-many-$t" --login --pin "$PIN" --keypairgen \
				--key-type EC:prime256v1 --id "$(printf '%02x' "$k")" --label "key$k" \
				--usage-sign --sensitive >>"$M/log" 2>&1 || die "key generation failed"
		done
	done
	agent_start "$T/many.sock" "$T/many-agent.log" "$M/softhsm2.conf"
	MEM_ARGS=(--mem-socket "$T/many.sock")
fi

# The latency-bound profile: p11fault.so wraps the same SoftHSM token and
# delays every C_Sign (no state file: its writes would cost both sides).
LAT_ARGS=(--latency-unavailable "P11FAULT_SO not set (run through meson or run.sh)")
if [ -n "${P11FAULT_SO:-}" ] && [ -e "$P11FAULT_SO" ]; then
	echo "delay C_Sign $LAT_DELAY" >"$T/latency.control"
	export P11FAULT_MODULE=$P11AGENT_TEST_MODULE P11FAULT_CONTROL=$T/latency.control
	unset P11FAULT_STATE
	lat_conf=""
	if [ -n "$LAT_MAX" ]; then
		lat_conf=$T/latency-agent.conf
		printf '[agent]\nmax-sessions = %s\n' "$LAT_MAX" >"$lat_conf"
	fi
	agent_start "$T/latency.sock" "$T/latency-agent.log" "$SOFTHSM2_CONF" "$P11FAULT_SO" "$lat_conf"
	LAT_ARGS=(--latency-socket "$T/latency.sock" --latency-module "$P11FAULT_SO"
		--latency-delay "$LAT_DELAY" --latency-control "$T/latency.control"
		--latency-long-delay "${LAT_LONG:-$((LAT_DELAY * 4))}"
		${LAT_MAX:+--latency-max-sessions "$LAT_MAX"})
fi

cat >"$T/openssl.cnf" <<EOF
openssl_conf = openssl_init
[openssl_init]
providers = provider_sect
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

export P11BENCH_DIR=$P11AGENT_TEST_DIR P11BENCH_TOKEN=$P11AGENT_TEST_TOKEN \
	P11BENCH_MODULE=$P11AGENT_TEST_MODULE P11BENCH_PROVIDER=$P11AGENT_SO \
	P11BENCH_P11KIT_CLIENT=$P11KIT_CLIENT P11BENCH_P11KIT_UNAVAILABLE=$P11KIT_WHY \
	P11BENCH_CNF=$T/openssl.cnf P11BENCH_OPENSSL=$(command -v openssl) \
	P11AGENT_SOCKET=$SOCK OPENSSL_CONF=/dev/null
"$P11BENCH" run --seconds "$SECONDS_EACH" --rounds "$ROUNDS" --runs "$RUNS" --soak "$SOAK" \
	${JSON:+--json "$JSON"} "${MEM_ARGS[@]}" "${LAT_ARGS[@]}" "${ONLY[@]}" "${EXTRA[@]}"
rc=$?
if [ "$rc" -ne 0 ]; then
	echo "bench.sh: p11bench failed ($rc); agent log:" >&2
	tail -n 20 "$T/agent.log" >&2
fi
exit "$rc"
