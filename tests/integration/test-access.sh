#!/bin/bash
# Access control and audit: who may connect (per-user and system mode), which
# program may use which key, and one audit record per signature and refusal.
# Needs root: it creates two users for the test.
. "$(dirname "$0")/lib.sh"

it_setup
[ "$(id -u)" -eq 0 ] || tap_bail "test-access needs root (it creates users); run it as root"
command -v runuser >/dev/null || tap_bail "runuser not installed (util-linux)"

U2=p11agent-t2
U3=p11agent-t3
for u in $U2 $U3; do
	id "$u" >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin "$u" ||
		tap_bail "cannot create user $u"
done

# Files other users must read: a world-readable copy of what clients need.
P=$T/public
mkdir -m 0755 "$P"
head -c 500 /dev/urandom >"$P/msg"
plain dgst -sha256 -binary -out "$P/msg.sha256" "$P/msg" || tap_bail "openssl dgst"
cp "$T/certs/p256.pem" "$T/certs/rsa2048.pem" "$P/"
plain x509 -in "$P/p256.pem" -pubkey -noout >"$P/p256.pub"
write_cnf "$P/openssl.cnf"
chmod -R a+rX "$P"
O=$T/out # where other users write their signatures
mkdir -m 1777 "$O"

# as USER SOCKET ARGS...: openssl pkeyutl as another user through the provider
as() {
	local user=$1 sock=$2
	shift 2
	with_timeout "$IT_TIMEOUT" runuser -u "$user" -- env OPENSSL_CONF="$P/openssl.cnf" \
		P11AGENT_SOCKET="$sock" ${IT_PRELOAD:+LD_PRELOAD="$IT_PRELOAD"} openssl "$@"
}

sign_as() { # sign_as USER SOCKET OUT
	as "$1" "$2" pkeyutl -sign -inkey "$(uri p256)" -in "$P/msg.sha256" -out "$3"
}

verifies() {
	plain pkeyutl -verify -pubin -inkey "$P/p256.pub" -in "$P/msg.sha256" -sigfile "$1"
}

# --- per-user mode: only the owner (root here) ------------------------------
agent_start || tap_bail "p11agentd did not start"
# Other users reach $T only now: a per-user agent refuses to start with its
# socket in a directory open to others. As if the directory's and the
# socket's modes were wrong afterwards: the agent must still check peers.
chmod 0711 "$T"
chmod 0666 "$SOCK"

case_owner_signs() {
	client pkeyutl -sign -inkey "$(uri p256)" -in "$P/msg.sha256" -out "$T/owner.sig" &&
		verifies "$T/owner.sig"
}
tap_case "per-user mode: the owner signs" case_owner_signs

case_other_uid_refused() {
	local uid2
	uid2=$(id -u $U2)
	if sign_as $U2 "$SOCK" "$O/u2.sig" 2>"$T/u2.err"; then
		echo "uid $uid2 could sign through a per-user agent" >&2
		return 1
	fi
	grep -q "refused a client: uid $uid2" "$T/agent.log" ||
		{ echo "no refusal of uid $uid2 in the agent log" >&2; return 1; }
	grep -q "event=connect .*uid=$uid2 .*result=\"denied\"" "$T/agent.log" ||
		{ echo "no audit record of the refusal" >&2; return 1; }
}
tap_case "per-user mode: another uid is refused, logged and audited" case_other_uid_refused

case_audit_sign_record() {
	grep -E "audit: .*event=sign key=\"[^\"]*object=p256[^\"]*\" mechanism=ecdsa(/sha256)? uid=0 pid=[0-9]+ exe=\"[^\"]*openssl\" result=\"ok\" duration_us=[0-9]+" \
		"$T/agent.log" >/dev/null || { echo "no audit record for the owner's signature" >&2; return 1; }
	if grep -a -q -F "$(cat "$T/pin")" "$T/agent.log"; then
		echo "the PIN appears in the agent log" >&2
		return 1
	fi
}
tap_case "audit: a record of the signature with key, mechanism, uid, pid, exe, result, duration" \
	case_audit_sign_record

# audit_signs: the number of audit records of successful signatures
audit_signs() { grep -c 'audit: .*event=sign .*result="ok"' "$T/agent.log"; }
case_audit_count() {
	local a0 a1 s0 s1 i
	a0=$(audit_signs)
	s0=$(agent_signatures) || return 1
	for i in 1 2 3; do
		client pkeyutl -sign -inkey "$(uri p256)" -in "$P/msg.sha256" -out "$T/count$i.sig" ||
			return 1
	done
	a1=$(audit_signs)
	s1=$(agent_signatures) || return 1
	echo "audit records $a0 -> $a1, signatures $s0 -> $s1"
	[ $((a1 - a0)) -eq 3 ] || { echo "3 signatures, $((a1 - a0)) audit records" >&2; return 1; }
	[ "$a1" -eq "$s1" ] ||
		{ echo "$a1 audit records of signatures, the agent counts $s1 signatures" >&2; return 1; }
}
tap_case "audit: exactly one record per signature (count = the agent's signature counter)" \
	case_audit_count
agent_stop

# --- system mode: configured users and groups --------------------------------
SYS=$T/sys
mkdir -m 0755 "$SYS"
cat >"$T/system.conf" <<CONF
[agent]
allow-users = $U2
CONF
IT_AGENT_ARGS=(--system --config "$T/system.conf")
SOCK=$SYS/agent.sock
agent_start || tap_bail "p11agentd --system did not start"

case_system_socket_mode() {
	[ "$(stat -c %a "$SOCK")" = 666 ] || { echo "socket mode $(stat -c %a "$SOCK")" >&2; return 1; }
}
tap_case "system mode: socket reachable by all (the agent checks each peer)" case_system_socket_mode
case_system_allowed() {
	sign_as $U2 "$SOCK" "$O/sys-u2.sig" && verifies "$O/sys-u2.sig"
}
tap_case "system mode: an allowed user signs" case_system_allowed
case_system_stop_refused() {
	local rc=0
	with_timeout "$IT_TIMEOUT" runuser -u $U2 -- "$P11AGENTCTL" --socket "$SOCK" stop \
		>"$T/stop-u2.out" 2>&1 || rc=$?
	cat "$T/stop-u2.out"
	[ "$rc" -eq 1 ] && grep -q "may not stop this agent" "$T/stop-u2.out" &&
		kill -0 "$AGENT_PID"
}
tap_case "system mode: an allowed user may not stop the agent (Denied)" case_system_stop_refused
case_system_other_refused() {
	if sign_as $U3 "$SOCK" "$O/sys-u3.sig" 2>"$T/u3.err"; then
		echo "$U3 could sign though only $U2 is allowed" >&2
		return 1
	fi
	grep -q "refused a client: uid $(id -u $U3)" "$T/agent.log" || return 1
	# the program is told why (org.p11agent.Error.Denied), not "disconnected"
	grep -q "uid $(id -u $U3) is not allowed to use this agent (see allow-users" "$T/u3.err" ||
		{ echo "the client's error does not say why:" >&2; cat "$T/u3.err" >&2; return 1; }
}
tap_case "system mode: a user not in allow-users is refused with Denied, saying why" case_system_other_refused
agent_stop

case_system_refuses_world_readable_pin() {
	cp "$T/pin" "$T/pin.world"
	chmod 0644 "$T/pin.world"
	agent_start "$T/pin.world" || return 1
	if client pkeyutl -sign -inkey "$(uri p256)" -in "$P/msg.sha256" -out "$T/x.sig" \
		2>"$T/world.err"; then
		echo "signed with a world-readable PIN file in system mode" >&2
		return 1
	fi
	grep -q "accessible to every user" "$T/agent.log"
}
IT_CNF=$T/sys.cnf
write_cnf "$IT_CNF"
tap_case "system mode: a world-readable PIN file is refused" case_system_refuses_world_readable_pin
agent_stop

case_system_refuses_group_readable_pin() {
	cp "$T/pin" "$T/pin.group"
	chmod 0640 "$T/pin.group"
	agent_start "$T/pin.group" || return 1
	if client pkeyutl -sign -inkey "$(uri p256)" -in "$P/msg.sha256" -out "$T/x.sig" \
		2>"$T/group.err"; then
		echo "signed with a group-readable PIN file in system mode" >&2
		return 1
	fi
	grep -q "pin.group (mode 0640) is accessible to its group; refusing it" "$T/agent.log" &&
		grep -q "ready, but token 'p11agent-test' is not logged in" "$T/agent.log"
}
tap_case "system mode: a group-readable (0640) PIN file is refused; the agent says it cannot sign" \
	case_system_refuses_group_readable_pin
agent_stop
unset IT_CNF

# --- system mode: per-key allow-users and allow-groups ------------------------
G3=$(id -gn $U3)
cat >"$T/perkey.conf" <<CONF
[agent]
allow-users = $U2 $U3
[key pkcs11:object=p384]
allow-users = $U2
[key pkcs11:object=rsa2048]
allow-groups = $G3
CONF
IT_AGENT_ARGS=(--system --config "$T/perkey.conf")
SOCK=$SYS/agent.sock
agent_start || tap_bail "p11agentd --system did not start with per-key users"

# may USER KEY: USER signs with KEY through the system agent
may() {
	local o=()
	case $2 in rsa*) o=(-pkeyopt digest:sha256) ;; esac
	as "$1" "$SOCK" pkeyutl -sign -inkey "$(uri "$2")" -in "$P/msg.sha256" "${o[@]}" \
		-out "$O/$1-$2.sig"
}
# may_not USER KEY: refused, the client told so naming the key, audited
may_not() {
	if may "$1" "$2" 2>"$T/$1-$2.err"; then
		echo "$1 could sign with $2" >&2
		return 1
	fi
	grep -q "Denied\|may not use key" "$T/$1-$2.err" ||
		{ cat "$T/$1-$2.err" >&2; echo "the error does not say denied" >&2; return 1; }
	grep -q "object=$2" "$T/$1-$2.err" || { echo "the error does not name the key" >&2; return 1; }
	grep -q "event=sign .*object=$2.* uid=$(id -u "$1") .*result=\"denied\"" "$T/agent.log" ||
		{ echo "no audit record of the denial" >&2; return 1; }
}
case_key_users() { may $U2 p384 && may_not $U3 p384; }
tap_case "per-key allow-users: the listed user signs, another allowed user is denied" case_key_users
case_key_groups() { may $U3 rsa2048 && may_not $U2 rsa2048; }
tap_case "per-key allow-groups: a member of the group signs, a non-member is denied" case_key_groups
case_key_unlisted() { may $U2 p256 && may $U3 p256; }
tap_case "per-key lists leave other keys to the agent-wide allow-users" case_key_unlisted
agent_stop

# --- per-key executable policy ----------------------------------------------
OPENSSL_EXE=$(readlink -f "$(command -v openssl)")
mkdir -m 0755 "$T/bin"
cp "$OPENSSL_EXE" "$T/bin/openssl-copy"
cat >"$T/keys.conf" <<CONF
[key pkcs11:object=p256]
allow-exe = $OPENSSL_EXE
CONF
IT_AGENT_ARGS=(--config "$T/keys.conf")
SOCK=$T/agent.sock
chmod 0700 "$T" # a per-user agent's socket directory (only root signs below)
write_cnf "$CNF"
agent_start || tap_bail "p11agentd did not start with a key policy"

tap_case "key policy: $OPENSSL_EXE may use the key" case_owner_signs
case_copy_refused() {
	if with_timeout "$IT_TIMEOUT" env OPENSSL_CONF="$CNF" ${IT_PRELOAD:+LD_PRELOAD="$IT_PRELOAD"} \
		"$T/bin/openssl-copy" pkeyutl -sign -inkey "$(uri p256)" -in "$P/msg.sha256" \
		-out "$T/copy.sig" 2>"$T/copy.err"; then
		echo "a copy of openssl at another path could use the key" >&2
		return 1
	fi
	grep -q "Denied\|may not use key" "$T/copy.err" ||
		{ echo "the client's error does not say it was denied" >&2; return 1; }
	grep -q "object=p256" "$T/copy.err" || { echo "the error does not name the key" >&2; return 1; }
	grep -q "event=sign .*object=p256.*exe=\"$T/bin/openssl-copy\" result=\"denied\"" \
		"$T/agent.log" || { echo "no audit record of the denial" >&2; return 1; }
}
tap_case "key policy: another executable is denied, naming the key, and audited" case_copy_refused
case_other_key_unrestricted() {
	with_timeout "$IT_TIMEOUT" env OPENSSL_CONF="$CNF" ${IT_PRELOAD:+LD_PRELOAD="$IT_PRELOAD"} \
		"$T/bin/openssl-copy" pkeyutl -sign -inkey "$(uri p384)" -in "$P/msg.sha256" \
		-out "$T/copy384.sig"
}
tap_case "key policy: keys without a policy stay usable" case_other_key_unrestricted
agent_stop
tap_done
