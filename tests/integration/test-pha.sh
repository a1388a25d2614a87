#!/bin/bash
# TLS 1.3 post-handshake client authentication with a token key. OpenSSL
# 3.0's s_server has no -verify_post_handshake; run interactively, its `c`
# command asks for a certificate after the handshake
# (SSL_verify_client_post_handshake). So: s_server (software key, no
# certificate requested in the handshake, -verify_return_error) and
# s_client -enable_pha with the token key complete a handshake without a
# client certificate; then `c` on the server's stdin; the client answers
# with Certificate + CertificateVerify (signed by the agent); then data
# from the client reaches the server, which has verified the certificate
# (its verify callback prints the chain). A CertificateVerify the server
# rejects would end the connection with an alert instead.
. "$(dirname "$0")/lib-prog.sh"

prog_setup

# wait_for FILE PATTERN [TENTHS]: bounded wait for an extended regex.
wait_for() {
	local f=$1 re=$2 n=${3:-100} i
	[ -z "$IT_PRELOAD" ] || n=$((n * 3))
	for ((i = 0; i < n; i++)); do
		grep -Eq "$re" "$f" 2>/dev/null && return 0
		sleep 0.1
	done
	echo "no /$re/ in $(basename "$f") after $((n / 10)) s:" >&2
	cat "$f" >&2
	return 1
}

# pha KEY KEYARG [PHA_FLAG]: see above. PHA_FLAG (default -enable_pha) is
# the client's; with "" the server's request must fail.
pha() {
	local k=$1 keyarg=$2 flag=${3--enable_pha} d sfd cfd rc=0 n
	d=$T/pha-$k-$RANDOM
	mkdir -p "$d"
	mkfifo "$d/sin" "$d/cin" || return 1
	sig_mark || return 1
	SRV_PORT=$(free_port)
	# timeout(1) directly (not lib.sh's plain/client functions): $! must be
	# the process that gets SIGTERM, not a subshell
	timeout -k 2 "$IT_TIMEOUT" env OPENSSL_CONF=/dev/null openssl s_server -accept "127.0.0.1:$SRV_PORT" -naccept 1 -tls1_3 \
		-cert "$T/server.pem" -key "$T/server.key" -CAfile "$T/ca.pem" \
		-verify_return_error <"$d/sin" >"$d/server.out" 2>"$d/server.err" &
	SRV_PID=$!
	IT_BG_PIDS+=("$SRV_PID")
	exec {sfd}>"$d/sin"
	wait_for "$d/server.out" '^ACCEPT' || rc=1
	if [ "$rc" -eq 0 ]; then
		timeout -k 2 "$IT_TIMEOUT" "${PROG_ENV[@]}" openssl s_client -connect "127.0.0.1:$SRV_PORT" -servername localhost \
			-CAfile "$T/ca.pem" -verify_return_error -tls1_3 ${flag:+"$flag"} \
			-cert "$T/certs/$k.pem" -key "$keyarg" -brief \
			<"$d/cin" >"$d/client.out" 2>"$d/client.err" &
		CLI_PID=$!
		IT_BG_PIDS+=("$CLI_PID")
		exec {cfd}>"$d/cin"
		wait_for "$d/client.err" '^CONNECTION ESTABLISHED' || rc=1
	fi
	if [ "$rc" -eq 0 ]; then
		# The handshake itself carried no client certificate.
		n=$(agent_signatures)
		if [ "$n" != "$SIG_MARK" ] || grep -q "CN = $k" "$d/server.err"; then
			echo "a client certificate was sent in the handshake, not after it" >&2
			rc=1
		fi
	fi
	if [ "$rc" -eq 0 ]; then
		echo c >&"$sfd"
		if [ -z "$flag" ]; then
			# Without -enable_pha the server cannot ask.
			# (its stdout is a buffered file: look at stderr)
			wait_for "$d/server.err" 'SSL_verify_client_post_handshake:extension not received' ||
				rc=1
		else
			wait_for "$d/server.out" 'SSL_do_handshake -> 1' || rc=1
			# the client answers as soon as it reads the request
			for ((n = 0; n < 100 && rc == 0; n++)); do
				[ "$(agent_signatures)" -gt "$SIG_MARK" ] && break
				sleep 0.1
			done
			echo "pha-data-$k" >&"$cfd"
			wait_for "$d/server.out" "^pha-data-$k\$" || rc=1
			grep -A1 "^depth=0 O = p11agent tests, CN = $k\$" "$d/server.err" |
				grep -q '^verify return:1$' ||
				{ echo "the server did not verify the client certificate CN=$k" >&2; rc=1; }
		fi
	fi
	exec {cfd}>&- {sfd}>&-
	stop_pid "$CLI_PID" || true
	stop_pid "$SRV_PID" || true
	echo "--- server"; cat "$d/server.err"; grep -E '^(ACCEPT|SSL_do|Failed|pha-data)' "$d/server.out"
	echo "--- client"; cat "$d/client.err"
	[ "$rc" -eq 0 ] || return 1
	[ -z "$flag" ] || sig_signed
}

for k in $IT_KEYS; do
	tap_case "$k TLS 1.3 post-handshake auth, s_client -enable_pha -key pkcs11: URI" pha "$k" "$(uri "$k")"
done
ref_make p256 || tap_bail "p11agentctl ref p256 failed"
tap_case "p256 TLS 1.3 post-handshake auth, s_client -enable_pha -key reference file" \
	pha p256 "$T/refs/p256.pem"
tap_case "negative control: without -enable_pha the server cannot request a certificate" \
	pha p256 "$(uri p256)" ""

tap_done
