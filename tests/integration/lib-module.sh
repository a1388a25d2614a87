# shellcheck shell=bash
# Shared by the tests of p11agent-pkcs11.so in real programs that speak
# PKCS#11 themselves (test-gnutls, test-nss, test-firefox, test-ssh): they
# load the module, the module talks to the test's agent. Source it instead
# of lib-prog.sh (it sources lib-prog.sh and lib.sh), then call mod_setup.
#
# Needs P11AGENT_MODULE (and P11AGENT_PLAIN_MODULE in the ASan build), see
# module_for_tools in lib-prog.sh.
#
# Adds:
#   mod_setup              prog_setup, then P11MOD (the module the programs
#                          load) and P11AGENT_SOCKET=$SOCK (exported: the
#                          module finds the agent through it)
#   p11kit_private DIR     a p11-kit user configuration in DIR that loads
#                          only p11agent-pkcs11.so (user-config: only)
#   fifo_client DIR REGEX CMD...
#                          CMD with a request on stdin sent once its output
#                          matches REGEX (the handshake is done); page in
#                          DIR/page
#   cert_uri KEY           pkcs11: URI of KEY's certificate
#   httpd_start DIR ROOT VERSION
#                          mtls-httpd.py serving ROOT, client certificate
#                          required, TLS VERSION; requests in DIR/requests.log
. "$(dirname "${BASH_SOURCE[0]}")/lib-prog.sh"

# mod_setup: prog_setup, then P11MOD: the module the programs load
# (module_for_tools in lib-prog.sh: in the ASan build the normal build's,
# since none of these programs can run with libasan preloaded), and
# P11AGENT_SOCKET=$SOCK exported for the module in every program.
mod_setup() {
	prog_setup
	module_for_tools
	P11MOD=$(cd "$(dirname "$TOOL_MODULE")" && pwd)/$(basename "$TOOL_MODULE")
	export P11AGENT_SOCKET=$SOCK
}

# mod_userns "$@": first thing in a test that registers the module with
# p11-kit (p11kit_private). Run as root (CI), it starts the script again in
# a new user namespace where root is uid 1000 (unshare --map-user=1000):
# p11-kit then reads the private user configuration. Everything (agent,
# programs, p11agentctl) runs in that one namespace, so the agent's owner
# check and D-Bus EXTERNAL authentication see one uid. (A program in a
# namespace of its own, talking to an agent outside, claims uid 1000 in
# EXTERNAL while the kernel reports uid 0: the agent rightly refuses it.)
# Fails (Bail out) when user namespaces are not available.
mod_userns() {
	[ "$(id -u)" -eq 0 ] || return 0
	[ -z "${P11AGENT_TEST_USERNS:-}" ] || tap_bail "still uid 0 inside the user namespace"
	unshare --user --map-user=1000 --map-group=1000 -- true 2>"${TMPDIR:-/tmp}/userns.$$" || {
		sed 's/^/# /' "${TMPDIR:-/tmp}/userns.$$"
		rm -f "${TMPDIR:-/tmp}/userns.$$"
		tap_bail "running as root: p11-kit ignores root's user configuration, and" \
			"unshare --user (to run this test as uid 1000) failed; run the test as a normal user"
	}
	rm -f "${TMPDIR:-/tmp}/userns.$$"
	echo "# running as root: this test runs as uid 1000 in a user namespace (p11-kit ignores root's ~/.config/pkcs11)"
	P11AGENT_TEST_USERNS=1 exec unshare --user --map-user=1000 --map-group=1000 -- bash "$0" "$@"
}

cert_uri() { echo "pkcs11:token=$P11AGENT_TEST_TOKEN;object=$1;type=cert"; }

# p11kit_private DIR: DIR becomes an XDG_CONFIG_HOME whose p11-kit user
# configuration registers p11agent-pkcs11.so (pkcs11/modules/p11agent.module)
# and nothing else: pkcs11/pkcs11.conf says `user-config: only`, so the
# system's modules (SoftHSM, OpenSC, p11-kit-trust, tpm2) stay out. p11-kit
# reads ~/.config/pkcs11, ~/.config being $XDG_CONFIG_HOME when set; but
# not for root (p11-kit 0.24.1: "skipping user config in program running
# as root", P11_KIT_DEBUG=conf), nor in a setuid program. A test that needs
# it calls mod_userns first. Use: env XDG_CONFIG_HOME=DIR PROGRAM ...
p11kit_private() {
	local dir=$1
	mkdir -p "$dir/pkcs11/modules"
	printf 'user-config: only\n' >"$dir/pkcs11/pkcs11.conf"
	printf 'module: %s\n' "$P11MOD" >"$dir/pkcs11/modules/p11agent.module"
}

# fifo_client DIR REGEX CMD...: run CMD (bounded) with stdin from a fifo,
# stdout to DIR/client.out, stderr to DIR/client.err. Once either output
# matches REGEX (extended grep), an HTTP/1.0 GET goes to its stdin; the
# fifo stays open until CMD exits (the server closes after its page), so a
# client that stops at the end of its input does not cut the reply short.
# DIR/page gets the reply from its status line on. Returns CMD's status.
fifo_client() {
	local dir=$1 re=$2 rc=0 cpid fd
	shift 2
	rm -f "$dir/in"
	mkfifo "$dir/in" || return 1
	with_timeout "$IT_TIMEOUT" "$@" <"$dir/in" >"$dir/client.out" 2>"$dir/client.err" &
	cpid=$!
	exec {fd}>"$dir/in"
	while kill -0 "$cpid" 2>/dev/null; do
		if grep -Eq "$re" "$dir/client.out" "$dir/client.err" 2>/dev/null; then
			# a client that already closed its input fails this write; its
			# own status (below) then tells what went wrong
			(trap '' PIPE; printf 'GET / HTTP/1.0\r\n\r\n' >&"$fd") 2>/dev/null ||
				echo "fifo_client: the client had closed its input before the request" >&2
			break
		fi
		sleep 0.05
	done
	wait "$cpid" || rc=$?
	exec {fd}>&-
	sed -n '/^HTTP\/1.0 200 ok/,$p' "$dir/client.out" >"$dir/page"
	[ "$rc" -eq 0 ] || tail -n 30 "$dir/client.out" "$dir/client.err" >&2
	return "$rc"
}

# httpd_start DIR ROOT VERSION: mtls-httpd.py (a static file server that
# requires a client certificate issued by the test CA, TLS VERSION 1.2 or
# 1.3 only, the software server key) serving ROOT on a free port; each
# request it served is a line "request TLSv1.3 CN=p256 GET /path" in
# HTTPD_LOG (DIR/requests.log), each failed handshake "handshake-error ...".
# Unlike s_server -naccept 1 it serves any number of connections (git
# makes several; browsers open speculative ones). Sets HTTPD_PORT,
# HTTPD_PID.
httpd_start() {
	local dir=$1 root=$2 v=$3 try
	mkdir -p "$dir"
	HTTPD_LOG=$dir/requests.log
	for ((try = 0; try < 5; try++)); do
		HTTPD_PORT=$(free_port)
		: >"$HTTPD_LOG"
		bg httpd python3 "$IT_LIB_DIR/mtls-httpd.py" "$HTTPD_PORT" "$root" \
			"$T/server.pem" "$T/server.key" "$T/ca.pem" "$v" "$HTTPD_LOG"
		HTTPD_PID=$BG_PID
		wait_listen "$HTTPD_PORT" "$HTTPD_PID" && return 0
		grep -qi 'in use' "$T/httpd.log" || break
	done
	cat "$T/httpd.log" >&2
	return 1
}
