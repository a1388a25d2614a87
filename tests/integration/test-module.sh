#!/bin/bash
# p11agent-pkcs11.so, the PKCS#11 module that is a client of the agent:
# OpenSC's pkcs11-tool lists its slots and objects and signs with every
# mechanism, with no PIN given to the program; every signature is verified
# by openssl with the key's certificate and the agent's counter moves. Then
# a guest's manners: a stopped, killed or SIGSTOPped agent never hangs the
# program; fork, threads, an agent restart and slot events (modsign.c); and
# the agent refusing to load its own client.
#
# Environment (meson): P11AGENT_MODULE (the built module; the interop tests
# use the same name), P11AGENT_MODSIGN; under ASan P11AGENT_PLAIN_MODULE
# (module_for_tools in lib-prog.sh).
. "$(dirname "$0")/lib-prog.sh"

prog_require pkcs11-tool openssl unshare
[ -x "${P11AGENT_MODSIGN:-}" ] || tap_bail "P11AGENT_MODSIGN is not built: ${P11AGENT_MODSIGN:-}"
prog_setup
module_for_tools

# tool ARGS...: pkcs11-tool on our module, bounded, with the test socket.
tool() {
	with_timeout "$IT_TIMEOUT" env P11AGENT_SOCKET="$SOCK" pkcs11-tool --module "$TOOL_MODULE" "$@"
}
# soft ARGS...: pkcs11-tool on SoftHSM itself (what the agent serves).
soft() {
	with_timeout "$IT_TIMEOUT" pkcs11-tool --module "$MODULE" "$@"
}
# modsign MODE ARGS...: our PKCS#11 test program (built with this build's
# sanitizers, so it loads $P11AGENT_MODULE itself).
modsign() {
	with_timeout "$IT_TIMEOUT" env P11AGENT_SOCKET="$SOCK" "$P11AGENT_MODSIGN" "$P11AGENT_MODULE" "$@"
}

head -c 3000 /dev/urandom >"$T/msg"
for k in $IT_KEYS; do
	plain x509 -in "$T/certs/$k.pem" -pubkey -noout -out "$T/$k.pub" ||
		tap_bail "cannot read the public key of certs/$k.pem"
done
for md in sha256 sha384; do
	plain dgst "-$md" -binary -out "$T/msg.$md" "$T/msg" || tap_bail "openssl dgst failed"
done

# --- slots and objects ----------------------------------------------------
# token_fields FILE: the token's label, manufacturer, model and serial as
# pkcs11-tool -L prints them.
token_fields() {
	grep -E '^ +(token label|token manufacturer|token model|serial num) +:' "$1"
}

case_slots() {
	tool -L >"$T/L.out" 2>&1 || { cat "$T/L.out"; return 1; }
	soft -L >"$T/L.soft" 2>&1 || { cat "$T/L.soft"; return 1; }
	cat "$T/L.out"
	[ "$(grep -c '^Slot ' "$T/L.out")" -eq 1 ] || { echo "not one slot for the one token" >&2; return 1; }
	token_fields "$T/L.soft" | grep "p11agent-test" -A3 >"$T/fields.soft"
	token_fields "$T/L.out" >"$T/fields.out"
	if [ ! -s "$T/fields.out" ] || ! diff "$T/fields.soft" "$T/fields.out"; then
		echo "the token info differs from SoftHSM's" >&2
		return 1
	fi
	! grep -q 'login required' "$T/L.out" || { echo "the token asks for a login" >&2; return 1; }
}
tap_case "-L: one slot with the real token's label, manufacturer, model and serial; no login required" \
	case_slots

# objects OUTPUT: "KIND LABEL ID" for each object of pkcs11-tool -O output
# (KIND: private, public, certificate).
objects() {
	awk '/^Private Key Object/ { k = "private" } /^Public Key Object/ { k = "public" }
		/^Certificate Object/ { k = "certificate" }
		/^ +label:/ { l = $2 } /^ +ID:/ { print k, l, $2 }' "$1"
}

# The key IDs as SoftHSM has them (public objects: no login needed).
declare -A ID
soft -O >"$T/O.soft" 2>&1 || tap_bail "pkcs11-tool -O on SoftHSM failed"
for k in $IT_KEYS; do
	ID[$k]=$(objects "$T/O.soft" | awk -v l="$k" '$1 == "public" && $2 == l { print $3 }')
	[ -n "${ID[$k]}" ] || tap_bail "SoftHSM shows no public key $k"
done

case_objects() {
	local k kind
	tool -O >"$T/O.out" 2>&1 || { cat "$T/O.out"; return 1; }
	objects "$T/O.out" | tee "$T/objects.txt"
	[ "$(wc -l <"$T/objects.txt")" -eq $((3 * $(wc -w <<<"$IT_KEYS"))) ] ||
		{ echo "not three objects per key" >&2; return 1; }
	for k in $IT_KEYS; do
		for kind in private public certificate; do
			grep -qx "$kind $k ${ID[$k]}" "$T/objects.txt" ||
				{ echo "no $kind object labelled $k with ID ${ID[$k]}" >&2; return 1; }
		done
		# the public key and the certificate are the real ones: the same
		# bytes as pkcs11-tool reads from SoftHSM (pkcs11-tool 0.23 fails
		# to read a P-384 public key from any token, SoftHSM's too, and
		# writes Ed25519's as PEM: the same outcome is what counts)
		local srv=0 mrv=0
		soft --read-object --type pubkey --id "${ID[$k]}" -o "$T/$k.soft-pub" >/dev/null 2>&1 || srv=$?
		tool --read-object --type pubkey --id "${ID[$k]}" -o "$T/$k.mod-pub" >/dev/null 2>&1 || mrv=$?
		[ "$srv" -eq "$mrv" ] || { echo "$k: reading the public key: $mrv, SoftHSM: $srv" >&2; return 1; }
		if [ "$srv" -eq 0 ]; then
			cmp "$T/$k.soft-pub" "$T/$k.mod-pub" || { echo "$k: public key differs" >&2; return 1; }
		elif [ "$k" != p384 ]; then
			echo "$k: pkcs11-tool cannot read the public key of SoftHSM" >&2
			return 1
		fi
		tool --read-object --type cert --id "${ID[$k]}" -o "$T/$k.mod-cert.der" >/dev/null 2>&1 || return 1
		plain x509 -in "$T/certs/$k.pem" -outform DER -out "$T/$k.cert.der" || return 1
		cmp "$T/$k.mod-cert.der" "$T/$k.cert.der" || { echo "$k: certificate differs" >&2; return 1; }
	done
	[ "$(grep -c 'sensitive, always sensitive, never extractable' "$T/O.out")" -eq 4 ] ||
		{ echo "a private key is not sensitive/never extractable" >&2; return 1; }
}
tap_case "-O: each key is a private key, public key and certificate with SoftHSM's label and ID; public parts are the real ones" \
	case_objects

# --- signatures -------------------------------------------------------------
# sign KEY MECH IN OUT [OPTS...]: pkcs11-tool signs IN (no PIN given).
sign() {
	local k=$1 mech=$2 in=$3 out=$4
	shift 4
	tool -s -m "$mech" --id "${ID[$k]}" -i "$in" -o "$out" "$@"
}

case_ecdsa_raw() {
	local k=$1 md=$2
	sig_mark
	sign "$k" ECDSA "$T/msg.$md" "$T/$k.ecdsa.sig" --signature-format openssl || return 1
	plain pkeyutl -verify -pubin -inkey "$T/$k.pub" -in "$T/msg.$md" -sigfile "$T/$k.ecdsa.sig" &&
		sig_signed 1
}
tap_case "ECDSA P-256 (CKM_ECDSA over a SHA-256 digest) verifies" case_ecdsa_raw p256 sha256
tap_case "ECDSA P-384 (CKM_ECDSA over a SHA-384 digest) verifies" case_ecdsa_raw p384 sha384

case_hash_sign() {
	local k=$1 mech=$2 md=$3 sig=$T/$1.$2.sig
	shift 3
	local fmt=()
	[[ $mech != ECDSA* ]] || fmt=(--signature-format openssl)
	sig_mark
	sign "$k" "$mech" "$T/msg" "$sig" "${fmt[@]}" || return 1
	plain dgst "-$md" -verify "$T/$k.pub" "$@" -signature "$sig" "$T/msg" && sig_signed 1
}
tap_case "ECDSA-SHA256 with P-256 (the module hashes) verifies" case_hash_sign p256 ECDSA-SHA256 sha256
tap_case "ECDSA-SHA384 with P-384 verifies" case_hash_sign p384 ECDSA-SHA384 sha384
tap_case "SHA256-RSA-PKCS verifies" case_hash_sign rsa2048 SHA256-RSA-PKCS sha256
tap_case "SHA384-RSA-PKCS verifies" case_hash_sign rsa2048 SHA384-RSA-PKCS sha384
tap_case "SHA256-RSA-PKCS-PSS verifies" case_hash_sign rsa2048 SHA256-RSA-PKCS-PSS sha256 \
	-sigopt rsa_padding_mode:pss -sigopt rsa_pss_saltlen:digest

case_rsa_pkcs_raw() {
	# CKM_RSA_PKCS over a DigestInfo (what NSS and GnuTLS send)
	{ printf '3031300d060960864801650304020105000420' | xxd -r -p; cat "$T/msg.sha256"; } \
		>"$T/digestinfo"
	sig_mark
	sign rsa2048 RSA-PKCS "$T/digestinfo" "$T/rsa.pkcs.sig" || return 1
	plain pkeyutl -verify -pubin -inkey "$T/rsa2048.pub" -pkeyopt digest:sha256 \
		-in "$T/msg.sha256" -sigfile "$T/rsa.pkcs.sig" && sig_signed 1
}
tap_case "CKM_RSA_PKCS over a DigestInfo verifies" case_rsa_pkcs_raw

case_rsa_pss_raw() {
	sig_mark
	sign rsa2048 RSA-PKCS-PSS "$T/msg.sha256" "$T/rsa.pss.sig" --hash-algorithm SHA256 \
		--mgf MGF1-SHA256 --salt-len 32 || return 1
	plain pkeyutl -verify -pubin -inkey "$T/rsa2048.pub" -pkeyopt rsa_padding_mode:pss \
		-pkeyopt rsa_pss_saltlen:32 -pkeyopt digest:sha256 \
		-in "$T/msg.sha256" -sigfile "$T/rsa.pss.sig" && sig_signed 1
}
tap_case "CKM_RSA_PKCS_PSS (SHA-256, MGF1-SHA256, salt 32) over a digest verifies" case_rsa_pss_raw

case_eddsa() {
	sig_mark
	sign ed25519 EDDSA "$T/msg" "$T/ed.sig" || return 1
	plain pkeyutl -verify -pubin -inkey "$T/ed25519.pub" -rawin -in "$T/msg" \
		-sigfile "$T/ed.sig" && sig_signed 1
}
tap_case "CKM_EDDSA with Ed25519 (the whole message) verifies" case_eddsa

# --- fork, threads, restart, events (modsign.c) --------------------------------
case_fork() {
	local k
	for k in p256 rsa2048; do
		sig_mark
		modsign fork "$k" || return 1
		sig_signed 4 || return 1
	done
}
tap_case "fork: the child signs on the inherited session, and again after C_Initialize (P-256, RSA)" \
	case_fork

case_threads() {
	sig_mark
	modsign threads p256 8 25 && sig_signed 200
}
tap_case "threads: 8 threads x 25 signatures at once, each verified" case_threads

# wait_line FILE TEXT: until FILE has the line TEXT (bounded).
wait_line() {
	local i
	for ((i = 0; i < IT_TIMEOUT * 10; i++)); do
		grep -qx "$2" "$1" 2>/dev/null && return 0
		sleep 0.1
	done
	echo "no line '$2' in $1 within ${IT_TIMEOUT} s" >&2
	return 1
}

case_restart() {
	local pid rc=0
	rm -f "$T/go"
	modsign restart p256 "$T/go" >"$T/restart.out" 2>&1 &
	pid=$!
	wait_line "$T/restart.out" first || { kill "$pid"; wait "$pid"; return 1; }
	agent_kill
	agent_start || { kill "$pid"; wait "$pid"; return 1; }
	touch "$T/go"
	wait "$pid" || rc=$?
	cat "$T/restart.out"
	[ "$rc" -eq 0 ] && grep -qx second "$T/restart.out"
}
tap_case "agent restart (SIGKILL, new agent) between two signatures on one session: the second works" \
	case_restart

case_events() {
	local pid rc=0
	rm -f "$T/back"
	modsign events "$T/back" >"$T/events.out" 2>&1 &
	pid=$!
	wait_line "$T/events.out" ready || { kill "$pid"; wait "$pid"; return 1; }
	agent_stop || { kill "$pid"; wait "$pid"; return 1; }
	wait_line "$T/events.out" removed || { kill "$pid"; wait "$pid"; agent_start; return 1; }
	agent_start || { kill "$pid"; wait "$pid"; return 1; }
	touch "$T/back"
	wait "$pid" || rc=$?
	cat "$T/events.out"
	[ "$rc" -eq 0 ]
}
tap_case "slot events: none at first (CKF_DONT_BLOCK); the agent stops: token gone; back; C_Finalize wakes a waiter" \
	case_events

# --- a guest that never harms its host ---------------------------------------------
# bounded_list FILE: pkcs11-tool -L must end by itself (timeout(1)'s 124 or
# 137 mean it hung) and list no token.
bounded_list() {
	local rc=0
	tool -L >"$1" 2>&1 || rc=$?
	cat "$1"
	if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
		echo "pkcs11-tool -L hung (killed after ${IT_TIMEOUT} s)" >&2
		return 1
	fi
	! grep -q 'token label' "$1" || { echo "a token is listed without an agent" >&2; return 1; }
}

case_no_agent() {
	agent_stop || return 1
	bounded_list "$T/noagent.out" || return 1
	# a killed agent leaves its socket behind: connecting is refused
	agent_start || return 1
	agent_kill
	[ -S "$SOCK" ] || { echo "no stale socket left by SIGKILL" >&2; return 1; }
	bounded_list "$T/dead.out" || return 1
	# a library prints nothing by default; P11AGENT_PKCS11_DEBUG=1 says why
	! grep -q 'p11agent-pkcs11' "$T/noagent.out" "$T/dead.out" ||
		{ echo "the module printed without P11AGENT_PKCS11_DEBUG" >&2; return 1; }
	P11AGENT_PKCS11_DEBUG=1 tool -L >"$T/debug.out" 2>&1
	grep "p11agent-pkcs11: .*$SOCK" "$T/debug.out" ||
		{ echo "P11AGENT_PKCS11_DEBUG=1: no line naming the socket" >&2; cat "$T/debug.out" >&2; return 1; }
}
tap_case "stopped agent, killed agent (stale socket): pkcs11-tool -L ends, lists no token, prints nothing unless P11AGENT_PKCS11_DEBUG=1" \
	case_no_agent
agent_start || tap_bail "p11agentd did not start again"

case_hung_agent() {
	local rc=0
	kill -STOP "$AGENT_PID" || return 1
	bounded_list "$T/hung.out" || rc=1
	# in one process: the first listing waits for the agent (bounded), the
	# next ones do not wait again (times printed, not asserted)
	modsign slots 3 || rc=1
	kill -CONT "$AGENT_PID"
	return "$rc"
}
tap_case "SIGSTOPped agent: pkcs11-tool -L and three C_GetSlotList in one process end; no token" \
	case_hung_agent

case_after_hung() {
	sig_mark
	sign p256 ECDSA-SHA256 "$T/msg" "$T/after.sig" --signature-format openssl || return 1
	plain dgst -sha256 -verify "$T/p256.pub" -signature "$T/after.sig" "$T/msg" && sig_signed 1
}
tap_case "the agent continued: signing works again" case_after_hung

# --- the agent refuses its own client --------------------------------------------
case_refuse_module_option() {
	agent_stop || return 1
	IT_AGENT_ARGS=(--module "$P11AGENT_MODULE")
	agent_start || { IT_AGENT_ARGS=(); return 1; }
	IT_AGENT_ARGS=()
	grep -F "module $P11AGENT_MODULE refused" "$T/agent.log" ||
		{ echo "no warning naming $P11AGENT_MODULE in the agent's log" >&2; return 1; }
	with_timeout "$IT_TIMEOUT" "$P11AGENTCTL" --socket "$SOCK" keys >"$T/keys.out" 2>&1 || return 1
	[ "$(grep -c '^pkcs11:' "$T/keys.out")" -eq 4 ] ||
		{ echo "the agent does not serve SoftHSM's 4 keys:" >&2; cat "$T/keys.out" >&2; return 1; }
	case_after_hung
}
tap_case "--module p11agent-pkcs11.so: refused with a warning naming it; the agent serves SoftHSM's keys" \
	case_refuse_module_option

# The p11-kit registry (the agent without --module): a private mount
# namespace puts a modules directory of ours over p11-kit's (running as
# root, p11-kit reads no user registry) holding SoftHSM and our module,
# registered without disable-in.
case_refuse_registry() {
	local d=$T/registry real=$P11AGENTD before
	mkdir -p "$d/modules"
	printf 'module: %s\n' "$MODULE" >"$d/modules/softhsm2.module"
	printf 'module: %s\n' "$P11AGENT_MODULE" >"$d/modules/p11agent-test.module"
	cat >"$d/p11agentd" <<EOF
#!/bin/bash
# p11agentd with p11-kit's registry replaced, and without --module
args=()
while [ \$# -gt 0 ]; do
	if [ "\$1" = --module ]; then shift 2; continue; fi
	args+=("\$1"); shift
done
exec unshare -m --propagation private bash -c '
	for dir in /usr/share/p11-kit/modules /etc/pkcs11/modules; do
		[ -d "\$dir" ] && { mount --bind "$d/modules" "\$dir" || exit 99; }
	done
	exec "\$@"' p11agentd "$real" "\${args[@]}"
EOF
	chmod 0755 "$d/p11agentd"
	agent_stop || return 1
	before=$(wc -l <"$T/agent.log")
	P11AGENTD=$d/p11agentd
	agent_start
	local rc=$?
	P11AGENTD=$real
	[ "$rc" -eq 0 ] || return 1
	tail -n +$((before + 1)) "$T/agent.log" | grep -F "module $P11AGENT_MODULE refused" ||
		{ echo "no warning naming $P11AGENT_MODULE in the agent's log" >&2; return 1; }
	with_timeout "$IT_TIMEOUT" "$P11AGENTCTL" --socket "$SOCK" keys >"$T/keys.out" 2>&1 || return 1
	[ "$(grep -c '^pkcs11:' "$T/keys.out")" -eq 4 ] ||
		{ echo "the agent does not serve SoftHSM's 4 keys:" >&2; cat "$T/keys.out" >&2; return 1; }
	case_after_hung
}
tap_case "p11-kit registry with p11agent-pkcs11.so (no disable-in): refused, named; SoftHSM's keys served" \
	case_refuse_registry

tap_done
