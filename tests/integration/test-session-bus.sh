#!/bin/bash
# With a session bus, the agent also owns org.p11agent.Agent1 there and
# answers the same methods as on its socket.
. "$(dirname "$0")/lib.sh"

it_setup
command -v dbus-run-session >/dev/null || tap_bail "dbus-run-session not installed (package dbus)"
command -v dbus-send >/dev/null || tap_bail "dbus-send not installed (package dbus)"

# Everything that needs the bus runs inside one dbus-run-session; it writes
# what it saw to files that the cases below check.
cat >"$T/on-bus.sh" <<'INNER'
set -u
# no PIN source: after the Lock below, only a prompter can unlock the token
"$P11AGENTD" --foreground --module "$MODULE" --socket "$SOCK" 2>>"$T/agent.log" </dev/null &
pid=$!
for _ in $(seq 50); do
	dbus-send --session --print-reply --dest=org.freedesktop.DBus /org/freedesktop/DBus \
		org.freedesktop.DBus.NameHasOwner string:org.p11agent.Agent1 2>/dev/null |
		grep -q 'boolean true' && break
	sleep 0.1
done
call() {
	timeout 10 dbus-send --session --print-reply --dest=org.p11agent.Agent1 \
		/org/p11agent/Agent1 "$@"
}
call org.p11agent.Agent1.Status >"$T/bus-status.out" 2>&1
call org.p11agent.Agent1.ListKeys >"$T/bus-keys.out" 2>&1
call org.p11agent.Agent1.FindKeys string:'pkcs11:object=nope' >"$T/bus-none.out" 2>&1
call org.p11agent.Agent1.FindKeys string:'not-a-uri' >"$T/bus-bad-uri.out" 2>&1
# dbus-send cannot build a{sv}: this Sign has the wrong signature
call org.p11agent.Agent1.Sign string:'pkcs11:object=nope' string:ecdsa \
	dict:string:string: array:byte:1,2,3 >"$T/bus-sign.out" 2>&1
call org.freedesktop.DBus.Introspectable.Introspect >"$T/bus-introspect.out" 2>&1
# A desktop prompter registers; the agent (no PIN source, no pinentry) asks it.
call org.p11agent.Agent1.Lock string: boolean:false >"$T/bus-lock.out" 2>&1
"$P11AGENT_PROMPTER" "$(cat "$T/pin")" "$T/prompter.log" >"$T/prompter.out" 2>&1 &
ppid=$!
for _ in $(seq 50); do grep -q registered "$T/prompter.out" && break; sleep 0.1; done
env OPENSSL_CONF="$CNF" ${IT_PRELOAD:+LD_PRELOAD="$IT_PRELOAD"} timeout 30 \
	openssl dgst -sha256 -sign "pkcs11:object=p256;type=private" -out "$T/prompted.sig" \
	"$T/to-sign" 2>"$T/prompted.err"
echo "$?" >"$T/prompted.rc"
kill "$ppid"
kill -TERM "$pid"
wait "$pid"
echo "$?" >"$T/agent-exit"
INNER
echo data >"$T/to-sign"
export IT_LIB_DIR T SOCK MODULE P11AGENTD P11AGENT_PROMPTER CNF IT_PRELOAD
with_timeout 60 dbus-run-session -- bash "$T/on-bus.sh" >"$T/on-bus.log" 2>&1

tap_case "Status over the session bus" grep -q '"signatures"' "$T/bus-status.out"
tap_case "ListKeys over the session bus lists the token's keys" \
	bash -c "grep -c 'type=private' '$T/bus-keys.out' | grep -qx 4"
tap_case "FindKeys with a URI that matches nothing returns no keys" \
	bash -c "! grep -q 'type=private' '$T/bus-none.out' && grep -q 'array' '$T/bus-none.out'"
tap_case "FindKeys with a malformed URI is org.p11agent.Error.InvalidArgs naming it" \
	bash -c "grep -q 'org.p11agent.Error.InvalidArgs' '$T/bus-bad-uri.out' && grep -q 'not-a-uri' '$T/bus-bad-uri.out'"
tap_case "Sign with the wrong argument types is InvalidArgs naming the signature" \
	bash -c "grep -q 'org.p11agent.Error.InvalidArgs' '$T/bus-sign.out' && grep -q 'ssa{sv}ay' '$T/bus-sign.out'"
tap_case "Introspect returns the interface" grep -q 'interface name="org.p11agent.Agent1"' \
	"$T/bus-introspect.out"
tap_case "a registered desktop prompter is asked for the PIN, and the signature is made" \
	grep -qx 0 "$T/prompted.rc"
tap_case "the prompter is told the token, the key and the program" \
	grep -q 'GetPin token=\[p11agent-test\] key=\[p256\].*program=\[.*openssl\]' "$T/prompter.log"
tap_case "agent exits 0 on SIGTERM" grep -qx 0 "$T/agent-exit"
tap_done
