#!/bin/bash
# SIGHUP reloads agent.conf: a [key] policy changes while the agent runs, a
# file that does not parse or fails its owner/mode check is refused (the
# settings in force stay, the log says why), a changed module asks for a
# restart, and audit-file gets one line per signature, reopened on SIGHUP
# after log rotation. The agent runs with --debug pkcs11.
. "$(dirname "$0")/lib.sh"

it_setup

head -c 300 /dev/urandom >"$T/msg"
plain dgst -sha256 -binary -out "$T/msg.sha256" "$T/msg" || tap_bail "openssl dgst"
plain x509 -in "$T/certs/p256.pem" -pubkey -noout >"$T/p256.pub" || tap_bail "openssl x509"
OPENSSL_EXE=$(readlink -f "$(command -v openssl)")
AGENT_CONF=$T/agent.conf
AUDIT=$T/audit.log

# conf MODE: agent.conf from stdin, written whole (rename), with MODE
conf() {
	cat >"$AGENT_CONF.new"
	chmod "$1" "$AGENT_CONF.new"
	mv "$AGENT_CONF.new" "$AGENT_CONF"
}


# sign NAME: p256 through the provider, signature to $T/NAME.sig
sign() {
	client pkeyutl -sign -inkey "$(uri p256)" -in "$T/msg.sha256" -out "$T/$1.sig" 2>"$T/$1.err"
}
verifies() {
	plain pkeyutl -verify -pubin -inkey "$T/p256.pub" -in "$T/msg.sha256" -sigfile "$T/$1.sig"
}
denied() {
	if sign "$1"; then
		echo "openssl could sign with p256" >&2
		return 1
	fi
	grep -q "Denied\|may not use key" "$T/$1.err" ||
		{ cat "$T/$1.err" >&2; echo "the error does not say denied" >&2; return 1; }
}
deny_conf() {
	conf 0600 <<CONF
[agent]
audit-file = $AUDIT
[key pkcs11:object=p256]
allow-exe = /nonexistent
CONF
}
allow_conf() { # allow_conf MODE [EXTRA [agent] LINE]
	conf "$1" <<CONF
[agent]
audit-file = $AUDIT
${2:-}
[key pkcs11:object=p256]
allow-exe = $OPENSSL_EXE
CONF
}

deny_conf
# --debug pkcs11 must switch on the token layer's trace as P11AGENT_DEBUG does
IT_AGENT_ARGS=(--config "$AGENT_CONF" --debug pkcs11)
agent_start || tap_bail "p11agentd did not start"

case_debug_pkcs11() {
	grep -q "^p11agent\[pkcs11\] .*loaded module $MODULE" "$T/agent.log" ||
		{ echo "--debug pkcs11 gave no token-layer trace" >&2; return 1; }
}
tap_case "--debug pkcs11 traces the token layer (as P11AGENT_DEBUG=pkcs11)" case_debug_pkcs11

tap_case "start: [key] allow-exe = /nonexistent denies the key to openssl" denied denied1

case_broken_refused() {
	conf 0600 <<CONF
[agent]
audit-file = $AUDIT
[key notauri]
allow-exe = $OPENSSL_EXE
CONF
	agent_hup || return 1
	grep -q "reload refused: $AGENT_CONF:3: \[key notauri\]: 'notauri' is not a pkcs11: URI.*the configuration in force stays unchanged" \
		"$T/agent.log" || { echo "no log line saying why the reload was refused" >&2; return 1; }
	kill -0 "$AGENT_PID" || { echo "the agent died" >&2; return 1; }
	denied denied2
}
tap_case "a broken agent.conf + SIGHUP is refused, logged, the old policy stays" case_broken_refused

case_writable_refused() {
	allow_conf 0620
	agent_hup || return 1
	grep -q "reload refused: refusing $AGENT_CONF: it is writable by its group" "$T/agent.log" ||
		{ echo "no log line naming the mode" >&2; return 1; }
	denied denied3
}
tap_case "a group-writable agent.conf + SIGHUP is refused, the old policy stays" case_writable_refused

case_allowed_after_hup() {
	allow_conf 0600
	agent_hup || return 1
	grep -q "reloaded $AGENT_CONF" "$T/agent.log" || { echo "no reload line" >&2; return 1; }
	sign allowed1 && verifies allowed1
}
tap_case "agent.conf rewritten to allow openssl + SIGHUP: the signature verifies" case_allowed_after_hup

case_audit_lines() {
	local n
	[ "$(stat -c %a "$AUDIT")" = 600 ] || { echo "audit file mode $(stat -c %a "$AUDIT")" >&2; return 1; }
	n=$(grep -c "event=sign " "$AUDIT")
	[ "$n" -eq 4 ] || { cat "$AUDIT" >&2; echo "$n sign lines in the audit file, not 4" >&2; return 1; }
	[ "$(wc -l <"$AUDIT")" -eq 4 ] || { cat "$AUDIT" >&2; echo "other lines too" >&2; return 1; }
	[ "$(grep -c 'result="denied"' "$AUDIT")" -eq 3 ] || { echo "not 3 denials" >&2; return 1; }
	tail -n 1 "$AUDIT" | grep -q "^time=.* event=sign key=\".*object=p256.*exe=\"$OPENSSL_EXE\" result=\"ok\"" ||
		{ tail -n 1 "$AUDIT" >&2; echo "the last line is not the signature" >&2; return 1; }
	# the journal (stderr) has the same records
	[ "$(grep -c "audit: .*event=sign " "$T/agent.log")" -eq 4 ] ||
		{ echo "the log does not have the 4 records" >&2; return 1; }
}
tap_case "audit-file: one line per signature (3 denied, 1 ok), mode 0600, as in the log" case_audit_lines

case_rotation() {
	mv "$AUDIT" "$AUDIT.1"
	sign rotated1 || return 1 # before SIGHUP: still into the moved file
	agent_hup || return 1
	sign rotated2 && verifies rotated2 || return 1
	[ "$(grep -c "event=sign " "$AUDIT.1")" -eq 5 ] ||
		{ cat "$AUDIT.1" >&2; echo "the moved file does not end with the signature before SIGHUP" >&2; return 1; }
	[ -f "$AUDIT" ] && [ "$(grep -c "event=sign .*result=\"ok\"" "$AUDIT")" -eq 1 ] &&
		[ "$(wc -l <"$AUDIT")" -eq 1 ] ||
		{ cat "$AUDIT" >&2; echo "the new file does not hold exactly the next signature" >&2; return 1; }
}
tap_case "audit-file: after mv + SIGHUP the next signature goes to the new file" case_rotation

case_module_needs_restart() {
	allow_conf 0600 "module = $MODULE"
	agent_hup || return 1
	grep -q "reload: $AGENT_CONF: module changed: needs a restart" "$T/agent.log" ||
		{ echo "no 'needs a restart' line" >&2; return 1; }
	sign module1 && verifies module1
}
tap_case "a changed module + SIGHUP logs 'needs a restart'; the rest applies, signing goes on" \
	case_module_needs_restart

tap_done
