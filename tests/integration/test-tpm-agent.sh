#!/bin/bash
# One agent, two token stacks (issue 13): SoftHSM and a software TPM
# (lib-tpm.sh) wrapped in p11fault.so, which counts the TPM's C_Login and
# C_Sign calls and slows its C_Sign down on demand.
# - both tokens' keys sign through one agent;
# - a slow TPM never holds up SoftHSM: a SoftHSM signature completes while
#   TPM signatures are in flight (held in the TPM module's C_Sign);
# - a wrong TPM PIN (from its [token] pin-source) is tried once, never
#   replayed, however often clients ask (a TPM counts wrong tries towards
#   its dictionary-attack lock-out);
# - the agent restarted with the TPM still logged out: SoftHSM signs, the
#   TPM's keys are listed, the rejected PIN file is not tried again (the
#   TPM's own lock-out counter stays at 1); the corrected file logs it in;
# - no --module: the modules registered with p11-kit, tpm2-pkcs11 among
#   them, as a user registers it in ~/.config/pkcs11/modules (normal build
#   only: slow under ASan).
. "$(dirname "$0")/lib-prog.sh"
. "$(dirname "$0")/lib-tpm.sh"

[ -n "${P11FAULT_SO:-}" ] && [ -f "$P11FAULT_SO" ] ||
	tap_bail "p11fault.so not built (P11FAULT_SO=${P11FAULT_SO:-})"
it_setup
tpm_setup

export P11FAULT_MODULE=$TPM_MODULE P11FAULT_CONTROL=$T/fault.ctl P11FAULT_STATE=$T/fault.state
: >"$P11FAULT_CONTROL"
fctl() { with_timeout 60 "$P11FAULT_CTL" -t 30 "$@"; }
# count FUNC: calls of FUNC the TPM module saw in this agent's lifetime
count() { fctl get "$1"; }

IT_AGENT_ARGS=(--module "$P11FAULT_SO")
printf 'pkcs11 sign input 32 bytes long.' >"$T/msg.bin"
openssl dgst -sha256 -binary "$T/msg.bin" >"$T/msg.sha256"

# sign_verify KEY URI PUB [OUT]: pkeyutl -sign through the agent, verified
# with the token's public key.
sign_verify() {
	local k=$1 u=$2 pub=$3 out=${4:-$T/$1.sig}
	client pkeyutl -sign -inkey "$u" -in "$T/msg.sha256" -out "$out" || return 1
	plain pkeyutl -verify -pubin -inkey "$pub" -in "$T/msg.sha256" -sigfile "$out"
}
tpm_state() { # tpm_state: "state: ..." of the TPM token in p11agentctl tokens
	with_timeout 30 "$P11AGENTCTL" --socket "$SOCK" tokens |
		awk -v t="token=$TPM_TOKEN" 'index($0, t) && /^pkcs11:/ { on = 1; next }
			/^pkcs11:/ { on = 0 } on && $1 == "state:" { print $2; exit }'
}

agent_start "$T/pin" || tap_bail "p11agentd did not start"

both_sign() {
	sign_verify soft-p256 "$(uri p256)" "$T/pub/p256.pem" &&
		sign_verify tpm-p256 "$(tpm_uri p256)" "$TPM_DIR/pub/p256.pem" &&
		sign_verify tpm-rsa2048 "$(tpm_uri rsa2048)" "$TPM_DIR/pub/rsa2048.pem" || return 1
	echo "TPM C_Sign calls: $(count C_Sign)"
	[ "$(count C_Sign)" -ge 2 ] || { echo "the TPM module did not sign" >&2; return 1; }
}
tap_case "one agent: SoftHSM P-256 and TPM P-256/RSA-2048 signatures verify" both_sign

# --- a slow TPM never holds up SoftHSM ---------------------------------
# Every TPM C_Sign is held 20 s in p11fault. Six TPM signatures are sent,
# more than the agent's sessions for the token; once the TPM module is
# inside C_Sign, a SoftHSM signature must complete while every TPM client
# is still waiting. Afterwards each TPM client either got a signature that
# verifies or (queued behind the held ones longer than the agent waits for
# a free session, 10 s) the agent's "token busy"; at least one signed.
slow_tpm() {
	local i pids=() base n rc=0 ok=0 busy=0
	base=$(count C_Sign)
	fctl do "delay C_Sign 20000" || return 1
	for i in 1 2 3 4 5 6; do
		client pkeyutl -sign -inkey "$(tpm_uri p256)" -in "$T/msg.sha256" \
			-out "$T/slow-$i.sig" >"$T/slow-$i.log" 2>&1 &
		pids+=($!)
	done
	fctl wait-min C_Sign $((base + 1)) || { echo "no TPM C_Sign began" >&2; rc=1; }
	if [ "$rc" -eq 0 ]; then
		sign_verify soft-p256 "$(uri p256)" "$T/pub/p256.pem" "$T/fast.sig" ||
			{ echo "the SoftHSM signature failed" >&2; rc=1; }
		n=0
		for i in "${!pids[@]}"; do
			kill -0 "${pids[i]}" 2>/dev/null && n=$((n + 1))
		done
		echo "SoftHSM signed; TPM clients still waiting: $n of ${#pids[@]};" \
			"TPM C_Sign calls begun: $(($(count C_Sign) - base))"
		[ "$n" -eq "${#pids[@]}" ] ||
			{ echo "a TPM signature finished before the SoftHSM one" >&2; rc=1; }
	fi
	fctl do "delay C_Sign 0" || rc=1
	for i in "${!pids[@]}"; do
		if wait "${pids[i]}" && plain pkeyutl -verify -pubin -inkey "$TPM_DIR/pub/p256.pem" \
			-in "$T/msg.sha256" -sigfile "$T/slow-$((i + 1)).sig" >/dev/null; then
			ok=$((ok + 1))
		elif grep -q 'token busy' "$T/slow-$((i + 1)).log"; then
			busy=$((busy + 1))
		else
			echo "TPM client $((i + 1)) failed:" >&2
			cat "$T/slow-$((i + 1)).log" >&2
			rc=1
		fi
	done
	echo "TPM clients: $ok signed, $busy refused as busy"
	[ "$ok" -ge 1 ] || { echo "no TPM client signed" >&2; rc=1; }
	return "$rc"
}
tap_case "slow TPM (C_Sign held 20 s, 6 clients): a SoftHSM signature completes while every TPM signature is in flight" \
	slow_tpm
agent_stop

# --- a wrong TPM PIN is never replayed ----------------------------------
# The TPM's PIN comes from its own [token] section; SoftHSM keeps the
# --pin-source PIN.
printf 'wrong-%s' "$(openssl rand -hex 4)" >"$TPM_DIR/pin-file"
chmod 0600 "$TPM_DIR/pin-file"
mkdir -p "$XDG_CONFIG_HOME/p11agent"
printf '[token pkcs11:token=%s]\npin-source = file:%s\n' "$TPM_TOKEN" "$TPM_DIR/pin-file" \
	>"$XDG_CONFIG_HOME/p11agent/agent.conf"
chmod 0600 "$XDG_CONFIG_HOME/p11agent/agent.conf"
agent_start "$T/pin" || tap_bail "p11agentd did not start"

# lockout_counter, max_auth_fail: the TPM's TPM2_PT_LOCKOUT_COUNTER
# (wrong authorisations counted) and TPM2_PT_MAX_AUTH_FAIL, in decimal.
tpm_prop() {
	local v
	v=$(with_timeout 30 tpm2_getcap properties-variable 2>/dev/null |
		awk -v p="$1:" '$1 == p { print $2; exit }')
	[[ $v =~ ^0x[0-9a-fA-F]+$ ]] || { echo "tpm2_getcap gave no $1" >&2; return 1; }
	echo $((v))
}
lockout_counter() { tpm_prop TPM2_PT_LOCKOUT_COUNTER; }
max_auth_fail() { tpm_prop TPM2_PT_MAX_AUTH_FAIL; }

wrong_pin() {
	local i logins fails da
	for i in 1 2 3 4; do
		if client pkeyutl -sign -inkey "$(tpm_uri p256)" -in "$T/msg.sha256" \
			-out "$T/wrong-$i.sig" 2>"$T/wrong-$i.err"; then
			echo "TPM signature $i succeeded with a wrong PIN" >&2
			return 1
		fi
	done
	cat "$T/wrong-4.err"
	sign_verify soft-p256 "$(uri p256)" "$T/pub/p256.pem" || return 1
	logins=$(count C_Login)
	fails=$(count C_Login.failed)
	echo "TPM C_Login calls: $logins (failed: $fails) for 4 signature requests"
	[ "$logins" -eq 1 ] && [ "$fails" -eq 1 ] ||
		{ echo "the wrong PIN was tried $logins times (expected once)" >&2; return 1; }
	[ "$(tpm_state)" = logged-out ] || { echo "TPM token state: $(tpm_state)" >&2; return 1; }
	# the TPM itself counted one wrong try (dictionary-attack lock-out)
	da=$(lockout_counter) || return 1
	echo "TPM lock-out counter: $da (locks out at $(max_auth_fail))"
	[ "$da" -eq 1 ] || { echo "the TPM counted $da wrong tries" >&2; return 1; }
	grep -q "rejected the PIN" "$T/agent.log"
}
tap_case "wrong TPM PIN: 4 TPM signatures refused, the PIN tried once (C_Login 1), SoftHSM signs" \
	wrong_pin

# The agent is restarted; the TPM is still logged out and the PIN file
# unchanged. The new agent does not try it either: the rejection is
# remembered next to the socket. Each try would count towards the TPM's
# lock-out (3 on swtpm): an agent restarted in a loop would lock the TPM.
restart_logged_out() {
	local out logins da
	agent_stop || return 1
	agent_start "$T/pin" || return 1
	out=$(with_timeout 30 "$P11AGENTCTL" --socket "$SOCK" keys) || return 1
	grep -q "token=$TPM_TOKEN;.*object=p256;type=private" <<<"$out" ||
		{ echo "the TPM's keys are not listed after the restart" >&2; return 1; }
	client pkeyutl -sign -inkey "$(tpm_uri p256)" -in "$T/msg.sha256" -out "$T/r.sig" &&
		{ echo "the TPM signed with a wrong PIN" >&2; return 1; }
	client pkeyutl -sign -inkey "$(tpm_uri p256)" -in "$T/msg.sha256" -out "$T/r.sig" &&
		{ echo "the TPM signed with a wrong PIN" >&2; return 1; }
	sign_verify soft-p256 "$(uri p256)" "$T/pub/p256.pem" || return 1
	logins=$(count C_Login)
	echo "TPM C_Login calls after the restart: $logins; state $(tpm_state)"
	[ "$logins" -eq 0 ] || { echo "the rejected PIN was tried $logins times" >&2; return 1; }
	da=$(lockout_counter) || return 1
	echo "TPM lock-out counter: $da (locks out at $(max_auth_fail))"
	[ "$da" -eq 1 ] || { echo "the TPM counted $da wrong tries" >&2; return 1; }
	[ "$(tpm_state)" = logged-out ] || return 1
	grep -q "rejected the PIN in $TPM_DIR/pin-file; not retrying" "$T/agent.log"
}
tap_case "agent restarted with the TPM logged out: keys listed, SoftHSM signs, the rejected PIN not tried again (C_Login 0)" \
	restart_logged_out

fixed_pin() {
	cp "$TPM_DIR/pin" "$TPM_DIR/pin-file.new" && mv "$TPM_DIR/pin-file.new" "$TPM_DIR/pin-file" ||
		return 1
	sign_verify tpm-p256 "$(tpm_uri p256)" "$TPM_DIR/pub/p256.pem" || return 1
	echo "TPM C_Login calls: $(count C_Login), state $(tpm_state)"
	[ "$(tpm_state)" = logged-in ]
}
tap_case "the corrected TPM PIN file: the TPM logs in and signs" fixed_pin
agent_stop
rm -f "$XDG_CONFIG_HOME/p11agent/agent.conf"

# --- no --module: p11-kit's registry ------------------------------------
# A user registers tpm2-pkcs11 in ~/.config/pkcs11/modules (here
# $XDG_CONFIG_HOME/pkcs11/modules). p11-kit reads a user's registry only
# in programs not running as root ("skipping user config in program
# running as root"); as root the module comes from the system registry,
# where Debian's libtpm2-pkcs11-1 registers it (tpm2_pkcs11.module).
registry() {
	local out
	mkdir -p "$XDG_CONFIG_HOME/pkcs11/modules"
	printf 'module: %s\n' "$TPM_MODULE" >"$XDG_CONFIG_HOME/pkcs11/modules/tpm-test.module"
	if [ "$(id -u)" -eq 0 ]; then
		echo "running as root: the system registry's tpm2-pkcs11"
		grep -lq 'tpm2_pkcs11' /usr/share/p11-kit/modules/*.module ||
			{ echo "tpm2-pkcs11 is not registered with p11-kit" >&2; return 1; }
	fi
	p11-kit list-modules 2>/dev/null | grep -A3 -E '^(tpm-test|tpm2_pkcs11):' || true
	if [ "$(id -u)" -ne 0 ]; then
		echo "not root: the user's registry $XDG_CONFIG_HOME/pkcs11/modules"
		# p11-kit lists a module registered twice (user, system) once,
		# under the system's name: its debug output shows what it read
		P11_KIT_DEBUG=conf p11-kit list-modules 2>&1 >/dev/null |
			grep -F "reading config file: $XDG_CONFIG_HOME/pkcs11/modules/tpm-test.module" ||
			{ echo "p11-kit does not read the user's tpm-test.module" >&2; return 1; }
	fi
	IT_AGENT_ARGS=()
	IT_AGENT_REGISTRY=1 agent_start "$T/pin" || return 1
	out=$(with_timeout 30 "$P11AGENTCTL" --socket "$SOCK" keys) || return 1
	echo "$out"
	grep -q "^pkcs11:model=SW%20%20%20TPM;.*token=$TPM_TOKEN;.*object=rsa2048;type=private" <<<"$out" ||
		{ echo "the TPM's keys are not listed" >&2; return 1; }
	sign_verify tpm-rsa2048 "$(tpm_uri rsa2048)" "$TPM_DIR/pub/rsa2048.pem"
}
# Normal build only: the agent then loads every registered module (OpenSC,
# p11-kit-trust's CA store, SoftHSM, tpm2-pkcs11), which under ASan takes
# over 30 s on a busy machine and keeps the script under 2 minutes there;
# the sanitized agent runs the TPM in every case above.
if [ -z "$IT_PRELOAD" ]; then
	tap_case "no --module: tpm2-pkcs11 found through p11-kit's registry, the TPM's RSA key signs" \
		registry
else
	echo "# ASan build: the p11-kit registry case runs in the normal build only"
fi

# the agent first (it uses the TPM), then the fixture, checked
agent_stop >/dev/null 2>&1
tpm_stop
tap_done
