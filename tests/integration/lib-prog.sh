# shellcheck shell=bash
# Shared by the real-program tests (test-<program>.sh): programs that are
# not openssl(1) using token keys through the provider, as clients (curl,
# Python, stunnel, psql) or servers (s_server, nginx, haproxy, stunnel).
# Source it instead of lib.sh (it sources lib.sh), then call prog_setup.
#
# Adds to lib.sh:
#   prog_require CMD...      fail (Bail out) when a program is missing
#   prog_env                 the environment for a program that must load
#                            the provider: OPENSSL_CONF, and under ASan the
#                            libasan preload (array PROG_ENV)
#   prog_unsanitized PROG    under ASan: PROG (curl, psql) runs without
#                            libasan, with the normal build's provider
#   module_for_tools         TOOL_MODULE: the p11agent-pkcs11.so programs
#                            load (under ASan: the normal build's)
#   ref_make KEY             $T/refs/KEY.pem, a key-reference file (0600)
#   srv_certs                $T/srv/KEY.pem: serverAuth certificates for
#                            the token keys (SAN localhost, 127.0.0.1)
#   bg NAME CMD...           start CMD in the background, bounded, logged
#                            to $T/NAME.log; sets BG_PID
#   wait_listen PORT PID     until PORT listens on loopback (bounded)
#   sig_mark / sig_signed N  the agent's counter went up by at least N
#   soft_get DIR PORT PROTO KEY [REQUEST]
#                            openssl s_client with a software client key
#                            against a server holding token key KEY: checks
#                            the server certificate (test CA, CN=KEY) and
#                            the server's signature type
#   proto_name tls1_3        TLSv1.3
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# prog_setup: it_setup, agent_start, and the pieces every program test
# needs. Bails out on failure.
prog_setup() {
	it_setup
	agent_start "$T/pin" || tap_bail "p11agentd did not start"
	prog_env
	mkdir -p "$T/refs"
	chmod 0700 "$T/refs"
}

# prog_require CMD...: the tests fail (not skip) when a program is missing;
# tests/packages.sh installs them.
prog_require() {
	local c
	for c in "$@"; do
		command -v "$c" >/dev/null 2>&1 ||
			tap_bail "$c not installed (tests/packages.sh lists its package)"
	done
}

# prog_env: PROG_ENV=(env OPENSSL_CONF=... [LD_PRELOAD=libasan ...]) for a
# program that loads the provider. Under ASan the provider is instrumented
# and the program is not: libasan has to be preloaded, as for openssl(1).
# Leak checking stays on for openssl(1) (lib.sh); for the other programs it
# is off, since LSan would report the programs' own exit-time leaks (their
# memory errors are still caught).
prog_env() {
	PROG_ENV=(env OPENSSL_CONF="$CNF")
	if [ -n "$IT_PRELOAD" ]; then
		PROG_ENV+=(LD_PRELOAD="$IT_PRELOAD"
			ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0:verify_asan_link_order=0")
	fi
}

# proto_name tls1_3 -> TLSv1.3
proto_name() { echo "${1/tls1_/TLSv1.}"; }

# ref_make KEY: $T/refs/KEY.pem, the key-reference file of token key KEY,
# written by p11agentctl ref (mode 0600).
ref_make() {
	local k=$1 f=$T/refs/$1.pem
	[ -s "$f" ] && return 0
	if ! with_timeout 10 "$P11AGENTCTL" --socket "$SOCK" ref "$(uri "$k")" -o "$f" \
		>"$T/refs/$k.log" 2>&1; then
		echo "p11agentctl ref $(uri "$k") -o $f failed:" >&2
		cat "$T/refs/$k.log" >&2
		rm -f "$f"
		return 1
	fi
}

# srv_certs: $T/srv/KEY.pem for each token key: the token's public key in
# a certificate for serverAuth and clientAuth, CN=KEY, SAN localhost and
# 127.0.0.1, issued by the test CA (mktoken's client certificates are for
# clientAuth only and a client refuses them on a server).
srv_certs() {
	local k d=$T/srv
	[ -f "$d/done" ] && return 0
	mkdir -p "$d"
	cat >"$d/ext.cnf" <<'EOF'
[srv]
basicConstraints = critical, CA:false
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
EOF
	plain genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 \
		-out "$d/throwaway.key" || return 1
	for k in $IT_KEYS; do
		plain req -new -key "$d/throwaway.key" -subj "/O=p11agent tests/CN=$k" \
			-out "$d/$k.csr" || return 1
		plain x509 -req -in "$d/$k.csr" -CA "$T/ca.pem" -CAkey "$T/ca.key" \
			-set_serial "0x$(openssl rand -hex 8)" -days 30 -sha256 \
			-extfile "$d/ext.cnf" -extensions srv -force_pubkey "$T/pub/$k.pem" \
			-out "$d/$k.pem" 2>"$d/$k.err" || { cat "$d/$k.err" >&2; return 1; }
	done
	touch "$d/done"
}

# bg NAME CMD...: run CMD in the background under timeout (4 x the client
# timeout: servers outlive several clients), stdout and stderr to
# $T/NAME.log, stdin from /dev/null. Sets BG_PID; it_cleanup stops it.
bg() {
	local name=$1
	shift
	# timeout(1) itself, not through the with_timeout function: $! must be
	# timeout's pid (it passes SIGTERM on), not a subshell's whose death
	# would leave the server running.
	timeout -k 2 $((IT_TIMEOUT * 4)) "$@" >"$T/$name.log" 2>&1 </dev/null &
	BG_PID=$!
	IT_BG_PIDS+=("$BG_PID")
}

# port_listening PORT: a TCP socket listens on PORT (IPv4 or IPv6).
port_listening() {
	local hex
	hex=$(printf ':%04X' "$1")
	awk -v p="$hex" 'FNR > 1 && $4 == "0A" && substr($2, length($2) - 4) == p { found = 1 }
		END { exit !found }' /proc/net/tcp /proc/net/tcp6 2>/dev/null
}

# wait_listen PORT PID [SECONDS]: wait until PORT listens; fail early when
# PID exits. Default limit 10 s (30 s under ASan).
wait_listen() {
	local port=$1 pid=$2 limit=${3:-10} i
	[ -z "$IT_PRELOAD" ] || limit=$((limit * 3))
	for ((i = 0; i < limit * 20; i++)); do
		port_listening "$port" && return 0
		if ! kill -0 "$pid" 2>/dev/null; then
			echo "server exited before listening on port $port" >&2
			return 1
		fi
		sleep 0.05
	done
	echo "nothing listens on port $port after $limit s" >&2
	return 1
}

# sig_mark: remember the agent's signature counter in SIG_MARK.
sig_mark() { SIG_MARK=$(agent_signatures); }

# sig_signed [N]: the counter went up by at least N (default 1) since
# sig_mark; says so on stdout, or why not on stderr.
sig_signed() {
	local n=${1:-1} now
	now=$(agent_signatures) || return 1
	if [ "$now" -lt $((SIG_MARK + n)) ]; then
		echo "agent signature counter $SIG_MARK -> $now (expected +$n): the token key did not sign through the agent" >&2
		return 1
	fi
	echo "agent signatures: $SIG_MARK -> $now"
}

# soft_get DIR PORT PROTO KEY [REQUEST]: connect with openssl s_client
# (default provider only, software client key soft/p256) to a server on
# PORT that holds token key KEY; send REQUEST (default an HTTP/1.0 GET)
# once connected, keep the reply in DIR/reply. Checks the server's
# certificate was verified against the test CA and is KEY's (CN=KEY), the
# protocol, and the server's signature type (sigtype_of KEY).
soft_get() {
	local dir=$1 port=$2 proto=$3 k=$4 req=${5:-'GET / HTTP/1.0\r\nHost: localhost\r\n\r\n'}
	local rc=0 cpid fd ok=0
	mkdir -p "$dir"
	rm -f "$dir/in"
	mkfifo "$dir/in" || return 1
	plain s_client -connect "127.0.0.1:$port" -servername localhost \
		-CAfile "$T/ca.pem" -verify_return_error "-$proto" \
		-cert "$T/soft/p256.pem" -key "$T/soft/p256.key" \
		-brief -ign_eof <"$dir/in" >"$dir/reply" 2>"$dir/client.err" &
	cpid=$!
	exec {fd}>"$dir/in"
	while kill -0 "$cpid" 2>/dev/null; do
		if grep -q '^CONNECTION ESTABLISHED' "$dir/client.err" 2>/dev/null; then
			# shellcheck disable=SC2059 # the request holds \r\n escapes
			# (the client may exit meanwhile: EPIPE, not SIGPIPE)
			(trap '' PIPE; printf "$req" >&"$fd") 2>/dev/null || true
			break
		fi
		sleep 0.05
	done
	exec {fd}>&-
	wait "$cpid" || rc=$?
	if ! grep -q '^CONNECTION ESTABLISHED' "$dir/client.err"; then
		echo "s_client (status $rc) did not connect:" >&2
		cat "$dir/client.err" >&2
		return 1
	fi
	grep -q '^Verification: OK' "$dir/client.err" ||
		{ echo "server certificate not verified" >&2; ok=1; }
	grep -Eq "^Peer certificate: .*CN ?= ?$k\$" "$dir/client.err" ||
		{ echo "server certificate is not CN=$k" >&2; ok=1; }
	grep -q "^Protocol version: $(proto_name "$proto")\$" "$dir/client.err" ||
		{ echo "protocol is not $(proto_name "$proto")" >&2; ok=1; }
	grep -q "^Signature type: $(sigtype_of "$k")\$" "$dir/client.err" ||
		{ echo "server signature type is not $(sigtype_of "$k")" >&2; ok=1; }
	[ "$ok" -eq 0 ] || cat "$dir/client.err" >&2
	return "$ok"
}

# client_case PROTO KEY FUNC [ARGS...]: the token key KEY as a client: an
# openssl s_server (software server key, default provider only) forced to
# PROTO requires and verifies a client certificate; FUNC DIR PORT ARGS...
# runs the program under test against 127.0.0.1:PORT and leaves the
# server's reply (its -www status page) in DIR/page. Passes when the
# server's page shows it accepted KEY's certificate with PROTO and KEY's
# signature type, and the agent signed. KEY "soft-*" is a harness check
# with a software key: the agent need not sign.
client_case() {
	local proto=$1 k=$2 func=$3 dir rc=0
	shift 3
	dir=$T/$func-$k-$proto-$RANDOM
	mkdir -p "$dir"
	: >"$dir/page"
	sig_mark || return 1
	server_start "$dir" "-$proto" || return 1
	"$func" "$dir" "$SRV_PORT" "$@" || rc=$?
	stop_pid "$SRV_PID" || true
	mtls_accepted "$dir" "$k" "$(proto_name "$proto")" "$(sigtype_of "$k")" || return 1
	# the program must also end well (not crash or hang after the page)
	[ "$rc" -eq 0 ] || { echo "$func exited with status $rc" >&2; return 1; }
	case $k in
	soft-*) ;;
	*) sig_signed 1 ;;
	esac
}

# prog_unsanitized PROGRAM: call after prog_setup for a program that cannot
# run with libasan preloaded. curl 7.88 and psql 15 hang in their second
# setlocale() call (single thread, futex wait on glibc's
# __libc_setlocale_lock) before any TLS or provider code: try
# `LD_PRELOAD=libasan.so.8 curl --version`. The trigger is GnuTLS (both
# link it through OpenLDAP): any program calling setlocale() twice hangs
# with LD_PRELOAD="libasan.so.8 libgnutls.so.30".
# In the ASan build such a program runs unsanitized and loads the normal
# build's (uninstrumented) provider, while the agent it talks to is this
# build's, under ASan and UBSan: every case runs, the agent's side is
# checked by the sanitizers. The provider is $P11AGENT_PLAIN_SO, by default
# build/provider/p11agent.so next to this build directory
# (tests/run-tests.sh builds build/ before build-asan/). Without one the
# test fails (Bail out): build the normal tree first. In the normal build
# this does nothing.
prog_unsanitized() {
	local so build
	[ -n "$IT_PRELOAD" ] || return 0
	build=$(dirname "$(dirname "$P11AGENT_SO")")
	so=${P11AGENT_PLAIN_SO:-$(dirname "$build")/build/provider/p11agent.so}
	[ -f "$so" ] || tap_bail "ASan build: $1 needs an uninstrumented provider: build" \
		"$(dirname "$build")/build first (meson setup build && meson compile -C build)" \
		"or set P11AGENT_PLAIN_SO"
	! ldd "$so" | grep -q 'libasan\.so' || tap_bail "P11AGENT_PLAIN_SO=$so is built with ASan"
	sed "s#^module = .*#module = $so#" "$CNF" >"$T/openssl-plain.cnf"
	PROG_ENV=(env OPENSSL_CONF="$T/openssl-plain.cnf")
	echo "# ASan build: $1 runs without ASan (a libasan preload hangs it in setlocale)" \
		"and loads $so; the agent runs under ASan"
}

# module_for_tools: sets TOOL_MODULE, the p11agent-pkcs11.so that programs
# load (pkcs11-tool, GnuTLS, NSS, ssh): $P11AGENT_MODULE. In the ASan build
# those programs run without libasan (as prog_unsanitized explains) and load
# the normal build's module, $P11AGENT_PLAIN_MODULE, by default
# build/module/p11agent-pkcs11.so next to this build directory; the agent
# runs under ASan, and a program of ours built here (tests/integration/
# modsign.c) loads the instrumented module itself. Bails out without one.
module_for_tools() {
	local build so
	if [ -z "${P11AGENT_MODULE:-}" ] || [ ! -f "$P11AGENT_MODULE" ]; then
		tap_bail "P11AGENT_MODULE is not set or not built: ${P11AGENT_MODULE:-}"
	fi
	# shellcheck disable=SC2034 # used by the test scripts
	TOOL_MODULE=$P11AGENT_MODULE
	[ -n "$IT_PRELOAD" ] || return 0
	build=$(dirname "$(dirname "$P11AGENT_MODULE")")
	so=${P11AGENT_PLAIN_MODULE:-$(dirname "$build")/build/module/p11agent-pkcs11.so}
	[ -f "$so" ] || tap_bail "ASan build: programs need an uninstrumented p11agent-pkcs11.so:" \
		"build $(dirname "$build")/build first or set P11AGENT_PLAIN_MODULE"
	! ldd "$so" | grep -q 'libasan\.so' || tap_bail "P11AGENT_PLAIN_MODULE=$so is built with ASan"
	# shellcheck disable=SC2034 # used by the test scripts
	TOOL_MODULE=$so
	echo "# ASan build: programs load $so; the agent and modsign run under ASan"
}

# --- nginx (test-nginx, test-nginx-load) ---------------------------------
# nginx_start CERT KEY: nginx on a free port (NGINX_PORT), in the
# foreground (master + NGINX_WORKERS workers), mutual TLS against the test
# CA. NGINX_CONNECTIONS (64) and NGINX_ACCESS_LOG (a file; "off") tune it
# for load. Sets NGINX_PID.
nginx_start() {
	local cert=$1 key=$2 d=$T/nginx try
	mkdir -p "$d"
	for ((try = 0; try < 3; try++)); do
		NGINX_PORT=$(free_port)
		cat >"$d/nginx.conf" <<EOC
daemon off;
master_process on;
worker_processes $NGINX_WORKERS;
user $(id -un) $(id -gn);
pid $d/nginx.pid;
error_log $d/error.log info;
events { worker_connections ${NGINX_CONNECTIONS:-64}; }
http {
	access_log ${NGINX_ACCESS_LOG:-$d/access.log};
	client_body_temp_path $d/body;
	proxy_temp_path $d/proxy;
	fastcgi_temp_path $d/fastcgi;
	uwsgi_temp_path $d/uwsgi;
	scgi_temp_path $d/scgi;
	server {
		# reuseport: the kernel spreads connections over the workers
		listen 127.0.0.1:$NGINX_PORT ssl reuseport;
		ssl_certificate $cert;
		ssl_certificate_key $key;
		ssl_client_certificate $T/ca.pem;
		ssl_verify_client on;
		ssl_protocols TLSv1.2 TLSv1.3;
		ssl_session_cache off;
		ssl_session_tickets off;
		location / {
			default_type text/plain;
			return 200 "nginx verify=\$ssl_client_verify dn=\$ssl_client_s_dn proto=\$ssl_protocol worker=\$pid\n";
		}
	}
}
EOC
		: >"$d/error.log"
		bg nginx "${PROG_ENV[@]}" nginx -p "$d" -c "$d/nginx.conf" -e "$d/error.log"
		NGINX_PID=$BG_PID
		wait_listen "$NGINX_PORT" "$NGINX_PID" && return 0
		grep -q 'in use' "$d/error.log" "$T/nginx.log" || break
	done
	echo "nginx did not start:" >&2
	cat "$T/nginx.log" "$d/error.log" >&2
	return 1
}

nginx_stop() {
	stop_pid "$NGINX_PID" || true
	# No worker may have crashed (a signal in the error log).
	if grep -E 'exited on signal|\[(alert|emerg|crit)\]' "$T/nginx/error.log" >&2; then
		return 1
	fi
}

