#!/bin/bash
# More signing threads in one process than the agent admits connections
# (issue 12): the provider's pool (max-connections, default 32) grows until
# the agent refuses a connection (max-clients, max-clients-per-user in
# agent.conf), then shares the connections it has. Every signature still
# succeeds and verifies, while the agent logs what it refused or closed.
# p11fault.so delays every C_Sign by 5 ms (a network HSM), so the
# connections stay busy and the agent's limit is met, not its victim rule
# alone.
. "$(dirname "$0")/lib.sh"

it_setup
for v in P11FAULT_SO; do
	[ -n "${!v:-}" ] || tap_bail "$v is not set (run through meson test)"
done
[ -x "${LOADSIGN:-}" ] || tap_bail "loadsign not built: ${LOADSIGN:-LOADSIGN unset}"

export P11FAULT_MODULE=$MODULE P11FAULT_CONTROL=$T/fault.ctl
unset P11FAULT_STATE
MODULE=$P11FAULT_SO
echo "delay C_Sign 5" >"$P11FAULT_CONTROL"

# over_limit NAME CONF THREADS LIMIT: an agent with agent.conf CONF; one
# loadsign process of THREADS threads signs for 3 s; nothing may fail, and
# the agent's log says it refused or closed connections at LIMIT.
over_limit() {
	local name=$1 conf=$2 threads=$3 limit=$4 rc=0
	printf '[agent]\n%b' "$conf" >"$T/$name.conf"
	IT_AGENT_ARGS=(--config "$T/$name.conf")
	echo "=== $name" >>"$T/agent.log"
	agent_start || return 1
	env P11AGENT_SOCKET="$SOCK" "$LOADSIGN" --key "$(uri p256)" --procs 1 \
		--threads "$threads" --seconds 3 >"$T/$name.out" 2>&1 || rc=1
	cat "$T/$name.out"
	grep -q '^loadsign: ok=[1-9][0-9]* failed=0 verify_failed=0' "$T/$name.out" || {
		echo "a signature failed or none was made" >&2
		rc=1
	}
	agent_stop || rc=1
	sed -n "/^=== $name/,\$p" "$T/agent.log" >"$T/$name.log"
	grep -E "(refused a client|closed a connection).*$limit" "$T/$name.log" || {
		echo "the agent logged no refusal naming $limit (so the limit was never met)" >&2
		rc=1
	}
	return "$rc"
}

tap_case "max-clients = 4, one process of 16 threads (max-connections 32): every signature succeeds, the agent refused or closed connections" \
	over_limit clients 'max-clients = 4\n' 16 "max-clients \\(4\\)"
tap_case "max-clients-per-user = 3, one process of 16 threads: every signature succeeds, the agent refused or closed connections" \
	over_limit peruser 'max-clients = 64\nmax-clients-per-user = 3\n' 16 "max-clients-per-user \\(3\\)"
tap_done
