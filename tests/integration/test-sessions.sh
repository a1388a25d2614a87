#!/bin/bash
# Parallel signatures on one token, without timing: p11fault.so holds every
# C_Sign on the test token (`hold C_Sign token=...`) until the test releases
# it, and counts the calls in flight. 16 clients (loadsign, 4 processes x 4
# threads, one agent connection each) must then have 16 C_Sign calls in
# flight at once (the pool grows past the 4 sessions it used to stop at);
# with `max-sessions = 2` for that token (agent.conf, applied by a reload)
# never more than 2, and while its sessions are all busy and 14 clients wait
# for one, a second token of the same module still signs. Every signature
# is verified.
. "$(dirname "$0")/lib.sh"

it_setup
for v in P11FAULT_SO P11FAULT_CTL; do
	[ -n "${!v:-}" ] || tap_bail "$v is not set (run through meson test)"
done
[ -x "${LOADSIGN:-}" ] || tap_bail "loadsign not built: ${LOADSIGN:-LOADSIGN unset}"

export P11FAULT_MODULE=$MODULE P11FAULT_CONTROL=$T/fault.ctl P11FAULT_STATE=$T/fault.state
MODULE=$P11FAULT_SO
: >"$P11FAULT_CONTROL"
TOK="token=$P11AGENT_TEST_TOKEN"
SECOND=p11agent-second
fault() { with_timeout 60 "$P11FAULT_CTL" -t 50 "$@"; }
count() { "$P11FAULT_CTL" get "$1"; }

# A second token in the same SoftHSM, with one P-256 key: the same module,
# so the same p11fault.so, but a slot of its own.
softhsm2-util --init-token --free --label "$SECOND" --pin "$(cat "$T/pin")" \
	--so-pin "$(cat "$T/so-pin")" >"$T/second.log" 2>&1 || {
	tap_diag <"$T/second.log"
	tap_bail "softhsm2-util --init-token failed"
}
pkcs11-tool --module "$P11AGENT_TEST_MODULE" --token-label "$SECOND" --login \
	--pin "$(cat "$T/pin")" --keypairgen --key-type EC:prime256v1 --id 01 --label second \
	--usage-sign >>"$T/second.log" 2>&1 || {
	tap_diag <"$T/second.log"
	tap_bail "key generation on $SECOND failed"
}
SECOND_URI="pkcs11:token=$SECOND;object=second;type=private"

cat >"$T/agent.conf" <<CONF
[agent]
poll-interval = 1
CONF
IT_AGENT_ARGS=(--config "$T/agent.conf")
agent_start || tap_bail "p11agentd did not start on p11fault.so"

# hup: agent_hup, and the reload must have been taken
hup() {
	agent_hup || return 1
	grep -q "reloaded " <(tail -n 5 "$T/agent.log") ||
		{ echo "the reload did not happen:" >&2; tail -n 5 "$T/agent.log" >&2; return 1; }
}

# load_start: 16 clients signing with p256 until $T/stop exists.
LOAD_PID=""
load_start() {
	rm -f "$T/stop"
	(exec env P11AGENT_SOCKET="$SOCK" "$LOADSIGN" --key "$(uri p256)" --procs 4 --threads 4 \
		--seconds 120 --stop-file "$T/stop" >"$T/load.out" 2>&1) &
	LOAD_PID=$!
	IT_BG_PIDS+=("$LOAD_PID")
}

# load_finish: release the token, stop the clients; every signature made
# must verify and none may fail.
load_finish() {
	local rc=0
	touch "$T/stop"
	fault do "release all" || rc=1
	wait "$LOAD_PID" || { echo "loadsign failed:" >&2; cat "$T/load.out" >&2; rc=1; }
	LOAD_PID=""
	grep '^loadsign: ok=' "$T/load.out" >&2
	return "$rc"
}

case_parallel() {
	local rc=0 n
	fault do "reset-counters" "hold C_Sign $TOK" || return 1
	load_start
	# 16 clients, each with a signature held in C_Sign: the pool opened a
	# session for each
	if ! fault wait-min C_Sign.held 16; then
		echo "only $(count C_Sign.held) C_Sign calls reached the token at once" >&2
		rc=1
	fi
	n=$(count C_Sign.inflight)
	[ "$n" -ge 16 ] || { echo "C_Sign in flight: $n, wanted 16" >&2; rc=1; }
	load_finish || rc=1
	echo "C_Sign in flight at most: $(count C_Sign.inflight-max); sessions open: $(count sessions)" >&2
	return "$rc"
}
tap_case "16 clients: 16 C_Sign calls in flight on one token at once" case_parallel

case_capped() {
	local rc=0 n
	cat >>"$T/agent.conf" <<-CONF
		[token pkcs11:$TOK]
		max-sessions = 2
	CONF
	hup || return 1
	fault do "reset-counters" "hold C_Sign $TOK" || return 1
	load_start
	fault wait-min C_Sign.held 2 || { echo "no 2 C_Sign calls held" >&2; rc=1; }
	# the token's 2 sessions are busy, 14 clients wait for one: the other
	# token signs meanwhile (its slot is not held), and verifies
	if ! sign_second; then
		echo "the second token did not sign while the first was saturated" >&2
		rc=1
	fi
	# every C_Sign on the test token waits in the hold: those held are all
	# that run there (the counters are the module's, over both tokens)
	n=$(count C_Sign.held)
	[ "$n" -eq 2 ] || { echo "C_Sign in flight with max-sessions = 2: $n" >&2; rc=1; }
	# from here on only the test token signs: after the release its 16
	# clients take turns on 2 sessions
	fault do "reset-counters" || rc=1
	load_finish || rc=1
	n=$(count C_Sign.inflight-max)
	[ "$n" -eq 2 ] || { echo "C_Sign in flight at most $n with max-sessions = 2" >&2; rc=1; }
	[ "$(count C_Sign)" -ge 14 ] || { echo "only $(count C_Sign) signatures after the release" >&2; rc=1; }
	return "$rc"
}

# sign_second: a signature with the second token's key through the
# provider, verified with its public key.
sign_second() {
	head -c 32 /dev/urandom >"$T/dgst"
	rm -f "$T/second.sig"
	client pkeyutl -sign -inkey "$SECOND_URI" -in "$T/dgst" -out "$T/second.sig" ||
		{ echo "pkeyutl -sign with $SECOND_URI failed" >&2; return 1; }
	client pkey -in "$SECOND_URI" -pubout -out "$T/second.pub" ||
		{ echo "cannot read the public key of $SECOND_URI" >&2; return 1; }
	plain pkeyutl -verify -pubin -inkey "$T/second.pub" -in "$T/dgst" -sigfile "$T/second.sig" ||
		{ echo "the signature of $SECOND_URI does not verify" >&2; return 1; }
}
tap_case "max-sessions = 2: at most 2 in flight, and another token signs meanwhile" case_capped

tap_done
