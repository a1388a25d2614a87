#!/bin/bash
# Hostile strings and files (issue 9: findings 1, 6 and 9). The agent guards
# keys for other programs: a client's URI, a client's executable path, the
# socket directory, agent.conf and whoever listens on the socket are all
# someone else's choice. Each attack must leave the agent up (or, for files,
# refuse to start with a message naming path, cause and fix) and a real
# client signing. Needs root: it makes files and a listener of user nobody.
. "$(dirname "$0")/lib.sh"

it_setup
[ "$(id -u)" -eq 0 ] || tap_bail "test-hostile needs root (files and a listener of user nobody)"
for tool in setpriv python3 iconv; do
	command -v "$tool" >/dev/null || tap_bail "$tool not installed"
done
RAWCALL=$IT_LIB_DIR/rawcall.py
# nobody cannot run root's pyenv shims: the system's interpreter for it
NOBODY_PY=/usr/bin/python3
[ -x "$NOBODY_PY" ] || NOBODY_PY=$(command -v python3)

head -c 300 /dev/urandom >"$T/msg"
plain dgst -sha256 -binary -out "$T/msg.sha256" "$T/msg" || tap_bail "openssl dgst"
plain x509 -in "$T/certs/p256.pem" -pubkey -noout -out "$T/p256.pub" || tap_bail "openssl x509"

# A per-key policy (the default config: $XDG_CONFIG_HOME/p11agent/agent.conf):
# only the real openssl may use the p256 key.
OPENSSL_EXE=$(readlink -f "$(command -v openssl)")
CONF=$T/config/p11agent/agent.conf
mkdir -p "$T/config/p11agent"
cat >"$CONF" <<CONF
[key pkcs11:object=p256]
allow-exe = $OPENSSL_EXE
CONF
chmod 0644 "$CONF"

agent_start || tap_bail "p11agentd did not start"

# real_client_signs: openssl pkeyutl through the provider, verified with the
# certificate's public key by the default provider alone.
real_client_signs() {
	rm -f "$T/real.sig"
	client pkeyutl -sign -inkey "$(uri p256)" -in "$T/msg.sha256" -out "$T/real.sig" ||
		{ echo "openssl pkeyutl -sign through the agent failed" >&2; return 1; }
	plain pkeyutl -verify -pubin -inkey "$T/p256.pub" -in "$T/msg.sha256" \
		-sigfile "$T/real.sig" || { echo "the signature does not verify" >&2; return 1; }
}

agent_alive() {
	kill -0 "$AGENT_PID" 2>/dev/null || { echo "the agent is gone" >&2; return 1; }
}

# --- (a) a long non-ASCII URI: every method answers with an error --------------
LONG_URI="x$(printf 'é%.0s' $(seq 600))"

# raw METHOD ARGS...: the call on the agent's socket; the reply must be an
# org.p11agent.Error.* whose message is valid UTF-8 of at most 2048 bytes.
raw_error() {
	local out
	out=$(with_timeout 30 python3 "$RAWCALL" "$SOCK" "$@") ||
		{ echo "no reply to $1: $out" >&2; return 1; }
	echo "$out"
	head -n 1 <<<"$out" | grep -Eq '^error org\.p11agent\.Error\.[A-Za-z]+ [0-9]+ yes$' ||
		{ echo "$1 did not get an org.p11agent.Error with a UTF-8 message" >&2; return 1; }
	[ "$(head -n 1 <<<"$out" | cut -d' ' -f3)" -le 2048 ] ||
		{ echo "error message longer than 2048 bytes" >&2; return 1; }
	agent_alive
}
case_long_uri() {
	raw_error FindKeys "s:$LONG_URI" || return 1
	raw_error Sign "s:$LONG_URI" s:ecdsa 'asv:{}' "ay:$(xxd -p -c 64 "$T/msg.sha256")" || return 1
	raw_error Unlock "s:$LONG_URI" ay:31323334 || return 1
	raw_error Lock "s:$LONG_URI" b:false || return 1
	# a valid URI naming no key (another message around it), one whose
	# message must be cut (past 2048 bytes), and raw bytes that are not
	# UTF-8 at all (libdbus itself turns those away; the agent stays up)
	raw_error Sign "s:pkcs11:object=$LONG_URI" s:ecdsa 'asv:{}' \
		"ay:$(xxd -p -c 64 "$T/msg.sha256")" || return 1
	raw_error FindKeys "s:x$LONG_URI$LONG_URI$LONG_URI" || return 1
	# libdbus drops a peer that sends invalid UTF-8: no answer, exit 1
	local rc=0
	with_timeout 30 python3 "$RAWCALL" "$SOCK" FindKeys "s:x$(printf '\xff')" \
		>"$T/ff.out" 2>&1 || rc=$?
	cat "$T/ff.out"
	[ "$rc" -eq 1 ] && grep -q "^no reply" "$T/ff.out" ||
		{ echo "raw FindKeys with byte 0xFF: status $rc, wanted 1 (dropped)" >&2; return 1; }
	agent_alive
}
tap_case "URI 'x'+'é'*600 to FindKeys, Sign, Unlock, Lock: errors, agent up" case_long_uri
tap_case "a real client still signs after the long URIs" real_client_signs

# --- (b) an executable path that forges log lines -----------------------------
FORGED='p11agentd: error: forged line'
mkdir -m 0755 "$T/bin"
BIN_FF=$T/bin/$'openssl\xff'
BIN_NL=$T/bin/$'x\n'"$FORGED"
cp "$OPENSSL_EXE" "$BIN_FF"
cp "$OPENSSL_EXE" "$BIN_NL"

run_copy() { # run_copy EXE OUT: pkeyutl -sign with the p256 key, must be refused
	if with_timeout "$IT_TIMEOUT" env OPENSSL_CONF="$CNF" \
		${IT_PRELOAD:+LD_PRELOAD="$IT_PRELOAD"} "$1" pkeyutl -sign -inkey "$(uri p256)" \
		-in "$T/msg.sha256" -out "$2.sig" 2>"$2.err"; then
		echo "a copy of openssl at another path could use the key" >&2
		return 1
	fi
	grep -q 'may not use key' "$2.err" ||
		{ echo "the client was not told it was denied:" >&2; cat "$2.err" >&2; return 1; }
}
case_exe_ff() {
	run_copy "$BIN_FF" "$T/ff" || return 1
	agent_alive || return 1
	grep -aF "exe=\"$T/bin/openssl\\xff\" result=\"denied\"" "$T/agent.log" ||
		{ echo "no audit line with the path escaped as openssl\\xff" >&2; return 1; }
	# the client's error (a D-Bus string) carries the path as U+FFFD
	grep -aF "$T/bin/openssl"$'\xef\xbf\xbd' "$T/ff.err" ||
		{ echo "the client's error does not show the path made UTF-8" >&2; return 1; }
}
tap_case "path with byte 0xFF refused by allow-exe: agent up, path escaped in the log" case_exe_ff
case_exe_newline() {
	run_copy "$BIN_NL" "$T/nl" || return 1
	agent_alive || return 1
	grep -aF "exe=\"$T/bin/x\\n$FORGED\" result=\"denied\"" "$T/agent.log" ||
		{ echo "no audit line with the newline escaped" >&2; return 1; }
	if grep -aEn "^(<[0-9]>)?$FORGED" "$T/agent.log"; then
		echo "a log line begins with the forged text" >&2
		return 1
	fi
}
tap_case "path with a newline and a fake log line: escaped, no forged line" case_exe_newline
case_log_clean() {
	# every line of the agent's log is UTF-8, without control characters
	iconv -f UTF-8 -t UTF-8 "$T/agent.log" >/dev/null ||
		{ echo "the agent log holds invalid UTF-8" >&2; return 1; }
	if LC_ALL=C grep -naP '[\x00-\x08\x0b-\x1f\x7f]' "$T/agent.log"; then
		echo "the agent log holds control characters" >&2
		return 1
	fi
}
tap_case "the agent's log is valid UTF-8 without control characters" case_log_clean
tap_case "a real client still signs after the forged paths" real_client_signs

# --- (d) a socket served by another uid ---------------------------------------
# A listener run by user nobody where the agent's socket should be: the
# provider and p11agentctl must not talk to it (they would send digests).
case_foreign_listener() {
	local evil=$T/evil sock pid i rc=0
	chmod 0711 "$T"
	mkdir -m 0755 "$evil"
	chown nobody "$evil"
	sock=$evil/agent.sock
	setpriv --reuid nobody --regid nogroup --clear-groups "$NOBODY_PY" -c '
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(sys.argv[1]); s.listen(8); s.settimeout(30)
got = 0
try:
    while True:
        c, _ = s.accept(); c.settimeout(2)
        try:
            while True:
                b = c.recv(4096)
                if not b: break
                got += len(b)
        except OSError: pass
        with open(sys.argv[1] + ".got", "w") as f: f.write(str(got))
except OSError: pass
' "$sock" 2>"$T/evil.err" &
	pid=$!
	IT_BG_PIDS+=("$pid")
	for ((i = 0; i < 50; i++)); do
		[ -S "$sock" ] && break
		sleep 0.1
	done
	[ -S "$sock" ] || { echo "the listener did not start" >&2; cat "$T/evil.err" >&2; return 1; }
	[ "$(stat -c %u "$sock")" = "$(id -u nobody)" ] || { echo "socket not nobody's" >&2; return 1; }
	if with_timeout "$IT_TIMEOUT" env OPENSSL_CONF="$CNF" P11AGENT_SOCKET="$sock" \
		${IT_PRELOAD:+LD_PRELOAD="$IT_PRELOAD"} openssl pkeyutl -sign -inkey "$(uri p256)" \
		-in "$T/msg.sha256" -out "$T/evil.sig" 2>"$T/evil-client.err"; then
		echo "the provider signed through a socket served by nobody" >&2
		rc=1
	fi
	grep -q "served by uid $(id -u nobody)" "$T/evil-client.err" ||
		{ echo "the provider's error does not name the peer's uid:" >&2
		  cat "$T/evil-client.err" >&2; rc=1; }
	grep -qF "$sock" "$T/evil-client.err" ||
		{ echo "the provider's error does not name the socket" >&2; rc=1; }
	if with_timeout 20 "$P11AGENTCTL" --socket "$sock" status >"$T/evil-ctl.out" 2>&1; then
		echo "p11agentctl talked to a socket served by nobody" >&2
		rc=1
	fi
	grep -q "served by uid $(id -u nobody)" "$T/evil-ctl.out" ||
		{ echo "p11agentctl's error does not name the cause:" >&2; cat "$T/evil-ctl.out" >&2; rc=1; }
	stop_checked "$pid" "the listener" || rc=1
	# not a byte (not even the authentication) went to the listener
	if [ -s "$sock.got" ] && [ "$(cat "$sock.got")" != 0 ]; then
		echo "the listener received $(cat "$sock.got") bytes" >&2
		rc=1
	fi
	chmod 0700 "$T"
	cat "$T/evil-client.err" "$T/evil-ctl.out"
	return "$rc"
}
tap_case "provider and p11agentctl refuse a socket served by user nobody, naming the cause" \
	case_foreign_listener
tap_case "the agent is still up after the attacks" agent_alive
tap_case "a real client signs at the end" real_client_signs
tap_case "agent exits with status 0 on SIGTERM" agent_stop

# --- (c) files the agent trusts: it refuses to start --------------------------
# refuses_to_start SOCKET PATTERN...: p11agentd exits with status 1 (not a
# crash, not a hang) before listening, its log says each PATTERN (fixed
# strings).
refuses_to_start() {
	local sock=$1 rc=0 log=$T/refuse.log pat
	shift
	with_timeout 60 env -u OPENSSL_CONF "$P11AGENTD" --foreground --module "$MODULE" \
		--socket "$sock" --pin-source "file:$T/pin" >"$log" 2>&1 </dev/null || rc=$?
	cat "$log" >>"$T/agent.log"
	cat "$log"
	[ "$rc" -eq 1 ] || { echo "p11agentd exited with status $rc, expected 1" >&2; return 1; }
	[ ! -S "$sock" ] || { echo "p11agentd created $sock anyway" >&2; return 1; }
	for pat in "$@"; do
		grep -qF -- "$pat" "$log" || { echo "the message does not say '$pat'" >&2; return 1; }
	done
}
case_dir_0777() {
	mkdir -m 0777 "$T/d777" && chmod 0777 "$T/d777"
	refuses_to_start "$T/d777/agent.sock" "socket directory $T/d777" "writable by every user" \
		"mode 0777" "chmod go-w $T/d777"
}
tap_case "socket directory mode 0777: refused, naming path, mode and fix" case_dir_0777
case_dir_0775() {
	mkdir -m 0775 "$T/d775" && chmod 0775 "$T/d775"
	refuses_to_start "$T/d775/agent.sock" "socket directory $T/d775" "writable by its group" \
		"mode 0775" "chmod go-w $T/d775"
}
tap_case "socket directory writable by its group (0775): refused" case_dir_0775
case_dir_readable_or_sticky() {
	# others may read (a 0755 home) or share a sticky directory (like
	# /tmp): they cannot replace the socket, and every peer is checked
	mkdir -m 0755 "$T/d755" && chmod 0755 "$T/d755"
	SOCK=$T/d755/agent.sock agent_start || return 1
	agent_stop || return 1
	mkdir "$T/d1777" && chmod 1777 "$T/d1777"
	SOCK=$T/d1777/agent.sock agent_start || return 1
	[ "$(stat -c %a "$T/d1777/agent.sock")" = 600 ] ||
		{ echo "socket mode $(stat -c %a "$T/d1777/agent.sock")" >&2; return 1; }
	agent_stop
}
tap_case "socket directories readable by others (0755) or sticky (1777) are used" \
	case_dir_readable_or_sticky
case_dir_symlink() {
	mkdir -m 0700 "$T/dreal"
	ln -s "$T/dreal" "$T/dlink"
	refuses_to_start "$T/dlink/agent.sock" "socket directory $T/dlink is a symbolic link"
}
tap_case "socket directory that is a symlink: refused" case_dir_symlink
case_dir_other_owner() {
	mkdir -m 0700 "$T/dother"
	chown nobody "$T/dother"
	refuses_to_start "$T/dother/agent.sock" "socket directory $T/dother" \
		"owned by uid $(id -u nobody)" "chown"
}
tap_case "socket directory owned by another uid: refused" case_dir_other_owner
case_dir_good() {
	# the control: a 0700 directory of ours is used, a missing one created 0700
	agent_start || return 1
	agent_stop || return 1
	SOCK=$T/dnew/agent.sock agent_start || return 1
	[ "$(stat -c %a "$T/dnew")" = 700 ] || { echo "created with mode $(stat -c %a "$T/dnew")" >&2; return 1; }
	[ "$(stat -c %a "$T/dnew/agent.sock")" = 600 ] ||
		{ echo "socket mode $(stat -c %a "$T/dnew/agent.sock")" >&2; return 1; }
	agent_stop
}
tap_case "control: a 0700 directory is used; a new one is made 0700 with a 0600 socket" case_dir_good

case_conf_group_writable() {
	chmod 0664 "$CONF"
	refuses_to_start "$SOCK" "refusing $CONF" "writable by its group" "mode 0664" \
		"chmod go-w $CONF"
	local rc=$?
	chmod 0644 "$CONF"
	return "$rc"
}
tap_case "agent.conf writable by its group: refused, naming file, mode and fix" \
	case_conf_group_writable
case_conf_world_writable() {
	chmod 0646 "$CONF"
	refuses_to_start "$SOCK" "refusing $CONF" "writable by every user"
	local rc=$?
	chmod 0644 "$CONF"
	return "$rc"
}
tap_case "agent.conf writable by every user: refused" case_conf_world_writable
case_conf_other_owner() {
	chown nobody "$CONF"
	refuses_to_start "$SOCK" "refusing $CONF" "owned by uid $(id -u nobody)" "chown"
	local rc=$?
	chown root "$CONF"
	return "$rc"
}
tap_case "agent.conf owned by another user: refused, naming the owner" case_conf_other_owner

case_no_sanitizer_report() {
	if grep -aEn 'Sanitizer|runtime error' "$T/agent.log"; then
		echo "sanitizer report in the agent log" >&2
		return 1
	fi
}
tap_case "no sanitizer report in the agent's log" case_no_sanitizer_report
tap_done
