#!/bin/bash
# Claims of the README and man pages that no other script checks, end to
# end: status --json, P-521 keys, cache-max, a token's try counter under
# wrong PINs (max-login-failures in p11fault.so), --module twice, modules
# from p11-kit's registry (the user's ~/.config/pkcs11/modules) and D-Bus
# activation by the shipped service file.
. "$(dirname "$0")/lib.sh"

export P11AGENT_TEST_EXTRA_KEYS=p521 # a fifth key on the token
it_setup
for v in P11FAULT_SO P11FAULT_CTL; do
	[ -n "${!v:-}" ] || tap_bail "$v is not set (run through meson test)"
done
for tool in python3 dbus-daemon dbus-send p11-kit; do
	command -v "$tool" >/dev/null || tap_bail "$tool not installed (packages dbus, p11-kit, python3)"
done
P11KIT_CLIENT=$(find /usr/lib /usr/lib64 -name p11-kit-client.so -path '*pkcs11*' 2>/dev/null | head -n 1)
[ -n "$P11KIT_CLIENT" ] || tap_bail "p11-kit-client.so not found (package p11-kit-modules)"
BUILD=$(dirname "$(dirname "$P11AGENTD")")
PIN=$(cat "$T/pin")
head -c 300 /dev/urandom >"$T/msg"
plain dgst -sha256 -binary -out "$T/msg.sha256" "$T/msg" || tap_bail "openssl dgst"
ctl() { with_timeout 30 "$P11AGENTCTL" --socket "$SOCK" "$@"; }
# sign_verify KEY [PUBKEY]: a signature through the agent that verifies
sign_verify() {
	local k=$1 pub=${2:-$T/pub/$1.pem}
	client pkeyutl -sign -inkey "$(uri "$k")" -in "$T/msg.sha256" -out "$T/$k.sig" || return 1
	plain pkeyutl -verify -pubin -inkey "$pub" -in "$T/msg.sha256" -sigfile "$T/$k.sig"
}

# --- status --json and P-521 ----------------------------------------------
agent_start || tap_bail "p11agentd did not start"

case_p521_sign() { sign_verify p521; }
tap_case "P-521 key: pkeyutl -sign through the agent verifies with the token's public key" \
	case_p521_sign

case_p521_tls() {
	local proto
	for proto in tls1_3 tls1_2; do
		mtls "$T/p521-$proto" "$(uri p521)" "$T/certs/p521.pem" "$proto" ||
			{ echo "$proto handshake failed" >&2; return 1; }
		mtls_accepted "$T/p521-$proto" p521 "TLSv1.${proto#tls1_}" ECDSA || return 1
	done
}
tap_case "P-521 key: mutual TLS 1.3 and 1.2 handshakes accepted by s_server" case_p521_tls

case_status_json() {
	local n
	n=$(agent_signatures) || return 1
	ctl --json status >"$T/status.json" || return 1
	cat "$T/status.json"
	python3 - "$T/status.json" "$AGENT_PID" "$SOCK" "$n" <<'PY'
import json, sys
path, pid, sock, sigs = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
s = json.load(open(path))
want = {"pid": pid, "socket": sock, "tokens": 1, "keys": 5, "signatures": sigs,
        "sign_failures": 0}
bad = [f"{k}: {s.get(k)!r}, want {v!r}" for k, v in want.items() if s.get(k) != v]
if not isinstance(s.get("version"), str) or not s["version"]:
    bad.append(f"version: {s.get('version')!r}")
if not isinstance(s.get("clients"), int) or s["clients"] < 1:
    bad.append(f"clients: {s.get('clients')!r} (this call is a client)")
if bad:
    sys.exit("status --json: " + "; ".join(bad))
PY
}
tap_case "p11agentctl --json status: valid JSON with pid, socket, tokens, keys, signatures" \
	case_status_json
agent_stop

# --- cache-max -------------------------------------------------------------
export FAKE_PINENTRY_LOG=$T/pinentry.log FAKE_PINENTRY_COUNT=$T/pinentry.count
prompts() { cat "$FAKE_PINENTRY_COUNT" 2>/dev/null || echo 0; }
ms_since() { echo $((($(date +%s%N) - $1) / 1000000)); }
case_cache_max() {
	local t0 i ms
	printf '[agent]\ncache-max = 5\n' >"$T/max.conf"
	export FAKE_PINENTRY_PINS=$PIN
	IT_AGENT_ARGS=(--pinentry "$IT_LIB_DIR/fake-pinentry.sh" --config "$T/max.conf")
	agent_start "$T/no-pin-file" || return 1
	t0=$(date +%s%N) # before the login: the login is at most this old
	sign_verify p256 || return 1
	# used all the time (cache-idle would never end this login); no new
	# prompt while the login is younger than cache-max
	while [ "$(ms_since "$t0")" -lt 3000 ]; do
		sleep 0.3
		sign_verify p256 || return 1
		ms=$(ms_since "$t0")
		[ "$ms" -ge 4500 ] || [ "$(prompts)" = 1 ] ||
			{ echo "prompted again $ms ms after the login (cache-max 5 s)" >&2; return 1; }
	done
	for ((i = 0; i < 100; i++)); do
		ctl tokens | grep -q "state: logged-in" || break
		sleep 0.1
	done
	ms=$(ms_since "$t0")
	if ctl tokens | grep -q "state: logged-in"; then
		echo "still logged in $ms ms after the login (cache-max 5 s)" >&2
		return 1
	fi
	echo "logged out after at most $ms ms"
	[ "$ms" -ge 5000 ] || { echo "logged out after $ms ms, before cache-max" >&2; return 1; }
	grep -q "login expired (cache-max)" "$T/agent.log" || return 1
	sign_verify p256 || return 1
	[ "$(prompts)" = 2 ] || { echo "prompts: $(prompts), wanted 2" >&2; return 1; }
}
tap_case "cache-max: a login used all the time still ends after cache-max; the next signature prompts" \
	case_cache_max
agent_stop
IT_AGENT_ARGS=()

# --- wrong PINs against a token that counts them ------------------------------
# p11fault.so checks PINs itself and locks the PIN after 3 wrong ones (flags
# count-low, then final-try). The agent must spend at most one try per PIN
# file content, none at the final try, and never lock the PIN.
export P11FAULT_MODULE=$MODULE P11FAULT_CONTROL=$T/fault.ctl P11FAULT_STATE=$T/fault.state
fault() { "$P11FAULT_CTL" "$@"; }
failures() { awk '$1 ~ /^slot\..*\.login-failures$/ { print $2; exit }' "$P11FAULT_STATE"; }
pin_locked() { awk '$1 ~ /^slot\..*\.pin-locked$/ { print $2; exit }' "$P11FAULT_STATE"; }
# wrong_pin_file N: a PIN file with another wrong PIN (N nines before the
# PIN: a new content and size each time)
wrong_pin_file() {
	printf '%s%s' "$(head -c "$1" /dev/zero | tr '\0' 9)" "$PIN" >"$T/pin.bad"
	chmod 0600 "$T/pin.bad"
}
sign_fails() { # sign_fails PATTERN: a signature fails, the error matching PATTERN
	local rc=0
	client pkeyutl -sign -inkey "$(uri p256)" -in "$T/msg.sha256" -out "$T/bad.sig" \
		2>"$T/bad.err" || rc=$?
	[ "$rc" -ne 0 ] && [ "$rc" -lt 124 ] || { echo "signing gave status $rc" >&2; return 1; }
	grep -Eqi "$1" "$T/bad.err" || { cat "$T/bad.err" >&2; return 1; }
}
case_login_failures() {
	fault -n set "max-login-failures 3 pin $PIN" || return 1
	wrong_pin_file 1
	MODULE=$P11FAULT_SO agent_start "$T/pin.bad" || return 1
	fault wait pid "$AGENT_PID" || return 1
	[ "$(fault get control.errors)" = 0 ] || { fault get control.last-error >&2; return 1; }
	sign_fails 'pin' || return 1
	sign_fails 'pin' || return 1
	[ "$(failures)" = 1 ] ||
		{ echo "token counted $(failures) wrong PINs for one PIN file: replayed" >&2; return 1; }
	wrong_pin_file 2 # the user "fixes" the file, wrongly again: one more try
	sign_fails 'pin' || return 1
	[ "$(failures)" = 2 ] || { echo "failures $(failures), wanted 2" >&2; return 1; }
	wrong_pin_file 3 # one try left: a file PIN is not risked
	sign_fails 'final PIN try' || return 1
	[ "$(failures)" = 2 ] && [ "$(pin_locked)" = 0 ] ||
		{ echo "the agent spent the final try: failures $(failures), locked $(pin_locked)" >&2; return 1; }
	# an unlock that does not say it knows this is the final try is refused
	# without trying the PIN; the person asks explicitly, with the right
	# PIN: logged in, count reset
	if echo "$PIN" | ctl unlock >"$T/unlock.out" 2>&1; then
		echo "unlock at the final try went ahead without --final-try" >&2
		return 1
	fi
	grep -q "unlock --final-try" "$T/unlock.out" || { cat "$T/unlock.out" >&2; return 1; }
	[ "$(failures)" = 2 ] || { echo "failures $(failures) after a refused unlock" >&2; return 1; }
	echo "$PIN" | ctl unlock --final-try | grep -qx unlocked || return 1
	[ "$(failures)" = 0 ] || { echo "failures $(failures) after a good login" >&2; return 1; }
	sign_verify p256
}
tap_case "3-try token, wrong PIN files: one try per file content, none at the final try, never locked" \
	case_login_failures
agent_stop

# --- --module twice ----------------------------------------------------------
# A second token "p11agent-two" in its own SoftHSM store, served by
# `p11-kit server`; the agent loads SoftHSM (first token) and
# p11-kit-client.so (second token) with two --module options.
two_setup() {
	local d=$T/two
	mkdir -p "$d/tokens"
	printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n' \
		"$d/tokens" >"$d/softhsm2.conf"
	export SOFTHSM2_CONF=$d/softhsm2.conf
	softhsm2-util --init-token --free --label p11agent-two --pin "$PIN" \
		--so-pin "$(cat "$T/so-pin")" &&
		pkcs11-tool --module "$MODULE" --token-label p11agent-two --login --pin "$PIN" \
			--keypairgen --key-type EC:prime256v1 --id 21 --label two256 --usage-sign --sensitive
	local rc=$?
	export SOFTHSM2_CONF=$T/softhsm2.conf
	return $rc
}
two_setup >"$T/two-setup.log" 2>&1 || { tap_diag <"$T/two-setup.log"; tap_bail "cannot make the second token"; }
SOFTHSM2_CONF=$T/two/softhsm2.conf timeout -k 2 $((IT_TIMEOUT * 10)) \
	p11-kit server -f --provider "$MODULE" -n "$T/two/p11kit.sock" "pkcs11:token=p11agent-two" \
	>"$T/p11kit-server.log" 2>&1 </dev/null &
IT_BG_PIDS+=("$!")
for _ in $(seq 100); do [ -S "$T/two/p11kit.sock" ] && break; sleep 0.05; done
export P11_KIT_SERVER_ADDRESS=unix:path=$T/two/p11kit.sock

case_two_modules() {
	local u2="pkcs11:token=p11agent-two;object=two256;type=private"
	IT_AGENT_ARGS=(--module "$P11KIT_CLIENT")
	agent_start || return 1
	ctl keys >"$T/two-keys.txt" || return 1
	cat "$T/two-keys.txt"
	grep -q "token=p11agent-test;.*object=p256" "$T/two-keys.txt" &&
		grep -q "token=p11agent-two;.*object=two256" "$T/two-keys.txt" ||
		{ echo "the keys of both modules are not listed" >&2; return 1; }
	sign_verify p256 || return 1
	client pkey -in "$u2" -pubout -out "$T/two256.pub" || return 1
	client pkeyutl -sign -inkey "$u2" -in "$T/msg.sha256" -out "$T/two.sig" || return 1
	plain pkeyutl -verify -pubin -inkey "$T/two256.pub" -in "$T/msg.sha256" -sigfile "$T/two.sig"
}
tap_case "--module twice (SoftHSM, p11-kit-client.so): keys of both listed, both sign" \
	case_two_modules
agent_stop
IT_AGENT_ARGS=()
unset P11_KIT_SERVER_ADDRESS

# --- p11-kit registry and D-Bus activation --------------------------------------
# A private session bus whose service directory holds the shipped
# org.p11agent.Agent1.service, its Exec pointed at a wrapper that runs the
# built agent and keeps its exit status. The agent gets no --module: it
# loads the modules registered with p11-kit, where Debian's softhsm2
# package registers SoftHSM (/usr/share/p11-kit/modules/softhsm2.module).
# p11-kit reads a user's own registry (~/.config/pkcs11/modules) only in
# programs not running as root ("skipping user config in program running
# as root"): these tests run as root, so the system registry is the one
# checked here. PIN and socket come from the defaults: agent.conf in
# $XDG_CONFIG_HOME and $XDG_RUNTIME_DIR/p11agent/agent.sock.
A=$T/act
mkdir -p "$A/services" "$A/config/p11agent" "$A/home"
mkdir -m 0700 "$A/run"
[ -f "$BUILD/packaging/org.p11agent.Agent1.service" ] ||
	tap_bail "the D-Bus service file is not built ($BUILD/packaging/org.p11agent.Agent1.service)"
cat >"$A/p11agentd-wrap" <<EOF
#!/bin/bash
# as agent_start does: SoftHSM's known leak suppressed (ASan build)
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}fast_unwind_on_malloc=0"
export LSAN_OPTIONS="suppressions=$IT_LIB_DIR/../unit/lsan-softhsm.supp"
"$P11AGENTD" "\$@" 2>>"$A/agent.log"
echo \$? >"$A/agent.status"
EOF
chmod 0755 "$A/p11agentd-wrap"
sed "s#^Exec=[^ ]*/p11agentd#Exec=$A/p11agentd-wrap#" "$BUILD/packaging/org.p11agent.Agent1.service" \
	>"$A/services/org.p11agent.Agent1.service"
p11-kit list-modules 2>/dev/null | grep -q '^softhsm2:' ||
	tap_bail "SoftHSM is not registered with p11-kit (softhsm2.module, package softhsm2)"
printf '[agent]\npin-source = file:%s\n' "$T/pin" >"$A/config/p11agent/agent.conf"
cat >"$A/bus.conf" <<EOF
<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path=$A/bus</listen>
  <servicedir>$A/services</servicedir>
  <!-- an ASan-built agent on a busy machine starts slowly -->
  <limit name="service_start_timeout">$((IT_TIMEOUT * 2000))</limit>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
EOF
# the bus passes its environment on to the agent it starts
env HOME="$A/home" XDG_CONFIG_HOME="$A/config" XDG_RUNTIME_DIR="$A/run" \
	timeout -k 2 $((IT_TIMEOUT * 10)) dbus-daemon --nofork --config-file="$A/bus.conf" \
	>"$A/dbus.log" 2>&1 </dev/null &
BUS_PID=$!
IT_BG_PIDS+=("$BUS_PID")
for _ in $(seq 100); do [ -S "$A/bus" ] && break; sleep 0.05; done
BUS=unix:path=$A/bus
ACT_PID=""

case_activation() {
	local out
	if dbus-send --bus="$BUS" --print-reply --dest=org.freedesktop.DBus /org/freedesktop/DBus \
		org.freedesktop.DBus.NameHasOwner string:org.p11agent.Agent1 | grep -q 'boolean true'; then
		echo "org.p11agent.Agent1 has an owner before anyone called it" >&2
		return 1
	fi
	out=$(with_timeout 60 dbus-send --bus="$BUS" --print-reply --reply-timeout=50000 \
		--dest=org.p11agent.Agent1 /org/p11agent/Agent1 org.p11agent.Agent1.Status) ||
		{ echo "Status by name failed: $out" >&2; cat "$A/dbus.log" "$A/agent.log" >&2; return 1; }
	echo "$out"
	ACT_PID=$(awk '/string "pid"/ { getline; print $NF; exit }' <<<"$out")
	[[ $ACT_PID =~ ^[0-9]+$ ]] || { echo "no pid in Status" >&2; return 1; }
	[ "$(readlink -f "/proc/$ACT_PID/exe")" = "$(readlink -f "$P11AGENTD")" ] ||
		{ echo "pid $ACT_PID is not the built p11agentd" >&2; return 1; }
	[ -S "$A/run/p11agent/agent.sock" ] || { echo "no socket in XDG_RUNTIME_DIR" >&2; return 1; }
}
tap_case "D-Bus activation: a call to org.p11agent.Agent1 starts the agent from the service file" \
	case_activation

case_registry() {
	local s=$A/run/p11agent/agent.sock
	[ -n "$ACT_PID" ] || return 1
	tr '\0' ' ' <"/proc/$ACT_PID/cmdline" | grep -q -- '--module' &&
		{ echo "the activated agent was given --module" >&2; return 1; }
	with_timeout 30 "$P11AGENTCTL" --socket "$s" keys | grep -q "token=p11agent-test;.*object=p384" ||
		{ echo "the test token's keys are not listed" >&2; return 1; }
	P11AGENT_SOCKET=$s sign_verify p384 || return 1
	grep -q "event=sign .*object=p384" "$A/agent.log"
}
tap_case "no --module: the agent loads the modules registered with p11-kit, and signs" \
	case_registry

case_activated_exit() {
	local i
	[ -n "$ACT_PID" ] || return 1
	kill -TERM "$ACT_PID"
	for ((i = 0; i < 300; i++)); do
		[ -s "$A/agent.status" ] && break
		sleep 0.1
	done
	[ "$(cat "$A/agent.status" 2>/dev/null)" = 0 ] || {
		IT_AGENT_BAD+=("the D-Bus-activated agent ended with status '$(cat "$A/agent.status" 2>/dev/null)'")
		echo "activated agent status: '$(cat "$A/agent.status" 2>/dev/null)'" >&2
		return 1
	}
}
tap_case "the activated agent exits 0 on SIGTERM" case_activated_exit
stop_at_end "$BUS_PID" "the private dbus-daemon"
tap_done
