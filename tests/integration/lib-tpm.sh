# shellcheck shell=bash
# A software TPM as a second token stack (issue 13): the TPM fixture beside
# mktoken.sh. Source it after lib-prog.sh (wait_listen, port_listening), call it_setup (or
# prog_setup), then tpm_setup.
#
# tpm_setup [DIR] starts, all private to this test and stopped by lib.sh's
# EXIT trap (their pids go to IT_BG_PIDS):
#   swtpm        a TPM 2.0 simulator on two free loopback ports (server,
#                control), state in DIR/state, already started up
#   dbus-daemon  a private session bus (unix socket DIR/bus): the resource
#                manager's bus, never the user's
#   tpm2-abrmd   the resource manager on that bus; tpm2-pkcs11 needs one
#                ("out of memory for object contexts" without)
# then makes the token with tpm2_ptool in the store DIR/store:
#   token "p11agent-tpm", user PIN DIR/pin (the SoftHSM token's PIN, so
#   one --pin-source serves both), SO PIN DIR/so-pin
#   keys  p256 (ecc256) and rsa2048, generated in the TPM (CKA_ID the
#         text "02" and "01": tpm2_ptool --id takes text, not hex)
#   DIR/pub/KEY.pem    the public key, read off the token
#   DIR/certs/KEY.pem  a certificate of the test CA ($T/ca.pem) for KEY,
#                      CN=KEY, clientAuth and serverAuth, SAN localhost
# and exports what tpm2-pkcs11 reads: TPM2_PKCS11_TCTI (the private
# resource manager), TPM2_PKCS11_STORE, TPM2TOOLS_TCTI; and sets
#   TPM_MODULE  libtpm2_pkcs11.so     TPM_TOKEN  p11agent-tpm
#   TPM_DIR     DIR                   TPM_KEYS   "p256 rsa2048"
# Everything works as root (tpm2-abrmd --allow-root) and as a user.
# Default DIR: $T/tpm. Bails out on failure.
#
# tpm_uri KEY: the TPM key's URI.  tpm_stop: stop the three processes and
# check how they ended (call it after agent_stop, before tap_done; the EXIT
# trap only kills what is left).

TPM_TOKEN=p11agent-tpm
# shellcheck disable=SC2034 # used by the test scripts
TPM_KEYS="p256 rsa2048"
TPM_PIDS=()

tpm_uri() { echo "pkcs11:token=$TPM_TOKEN;object=$1;type=private"; }

# tpm_find_module: the tpm2-pkcs11 module's path.
tpm_find_module() {
	local multiarch m
	multiarch=$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null ||
		gcc -print-multiarch 2>/dev/null || true)
	for m in ${multiarch:+/usr/lib/$multiarch/pkcs11/libtpm2_pkcs11.so} \
		/usr/lib64/pkcs11/libtpm2_pkcs11.so /usr/lib/pkcs11/libtpm2_pkcs11.so \
		/usr/local/lib/pkcs11/libtpm2_pkcs11.so; do
		[ -f "$m" ] && { echo "$m"; return 0; }
	done
	return 1
}

# tpm_log STEP CMD...: run CMD, output to DIR/setup.log; on failure the
# log's tail goes to stderr.
tpm_log() {
	local step=$1
	shift
	echo "=== $step: $*" >>"$TPM_DIR/setup.log"
	if ! with_timeout 120 "$@" >>"$TPM_DIR/setup.log" 2>&1; then
		echo "TPM fixture: $step failed:" >&2
		tail -n 20 "$TPM_DIR/setup.log" >&2
		return 1
	fi
}

# tpm_start_swtpm: swtpm on two free ports (retried when taken meanwhile).
tpm_start_swtpm() {
	local try i
	for ((try = 0; try < 5; try++)); do
		TPM_PORT=$(free_port)
		port_in_use $((TPM_PORT + 1)) && continue
		: >"$TPM_DIR/swtpm.log"
		timeout -k 2 $((IT_TIMEOUT * 40)) swtpm socket --tpm2 \
			--tpmstate "dir=$TPM_DIR/state" \
			--server "type=tcp,port=$TPM_PORT,bindaddr=127.0.0.1" \
			--ctrl "type=tcp,port=$((TPM_PORT + 1)),bindaddr=127.0.0.1" \
			--flags not-need-init,startup-clear \
			--log "file=$TPM_DIR/swtpm.log" </dev/null >>"$TPM_DIR/swtpm.log" 2>&1 &
		TPM_PIDS+=($!)
		IT_BG_PIDS+=($!)
		for ((i = 0; i < 100; i++)); do
			port_listening "$TPM_PORT" && port_listening $((TPM_PORT + 1)) && return 0
			kill -0 "${TPM_PIDS[-1]}" 2>/dev/null || break
			sleep 0.05
		done
		# swtpm has failed to start (it exits 1 on a port taken meanwhile):
		# its status is no news; the log says whether to try another port
		stop_pid "${TPM_PIDS[-1]}"
		unset 'TPM_PIDS[-1]'
		grep -qi 'in use' "$TPM_DIR/swtpm.log" || break
	done
	echo "swtpm did not start:" >&2
	cat "$TPM_DIR/swtpm.log" >&2
	return 1
}

# tpm_start_bus: the private session bus for tpm2-abrmd.
tpm_start_bus() {
	local i
	cat >"$TPM_DIR/bus.conf" <<EOF
<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path=$TPM_DIR/bus</listen>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
EOF
	timeout -k 2 $((IT_TIMEOUT * 40)) dbus-daemon --nofork --nopidfile \
		--config-file="$TPM_DIR/bus.conf" >"$TPM_DIR/dbus.log" 2>&1 </dev/null &
	TPM_PIDS+=($!)
	IT_BG_PIDS+=($!)
	for ((i = 0; i < 200; i++)); do
		[ -S "$TPM_DIR/bus" ] && return 0
		kill -0 "${TPM_PIDS[-1]}" 2>/dev/null || break
		sleep 0.05
	done
	echo "the TPM's private dbus-daemon did not start:" >&2
	cat "$TPM_DIR/dbus.log" >&2
	return 1
}

# tpm_start_abrmd: the resource manager, ready once its name is owned.
tpm_start_abrmd() {
	local root=() i
	[ "$(id -u)" -ne 0 ] || root=(--allow-root)
	timeout -k 2 $((IT_TIMEOUT * 40)) env DBUS_SESSION_BUS_ADDRESS="$TPM_BUS" \
		"$TPM_ABRMD" --session "${root[@]}" \
		--tcti="swtpm:host=127.0.0.1,port=$TPM_PORT" \
		>"$TPM_DIR/abrmd.log" 2>&1 </dev/null &
	TPM_PIDS+=($!)
	IT_BG_PIDS+=($!)
	for ((i = 0; i < 300; i++)); do
		if dbus-send --bus="$TPM_BUS" --print-reply --dest=org.freedesktop.DBus \
			/org/freedesktop/DBus org.freedesktop.DBus.NameHasOwner \
			string:com.intel.tss2.Tabrmd 2>/dev/null | grep -q 'boolean true'; then
			return 0
		fi
		kill -0 "${TPM_PIDS[-1]}" 2>/dev/null || break
		sleep 0.1
	done
	echo "tpm2-abrmd did not take its name on the private bus:" >&2
	cat "$TPM_DIR/abrmd.log" >&2
	return 1
}

# tpm_pubkey KEY: DIR/pub/KEY.pem from the token's public key object.
# RSA: pkcs11-tool writes DER SPKI. P-256: the SPKI is built from
# CKA_EC_POINT (as mktoken.sh does), which pkcs11-tool lists.
tpm_pubkey() {
	local k=$1 id p11 point
	# tpm2_ptool --id stores the text as is: CKA_ID "02" is 30 32
	id=$(printf '%s' "$2" | xxd -p)
	p11=(pkcs11-tool --module "$TPM_MODULE" --token-label "$TPM_TOKEN")
	case $k in
	rsa*)
		tpm_log "read $k" "${p11[@]}" --read-object --type pubkey --id "$id" \
			-o "$TPM_DIR/pub/$k.der" || return 1
		tpm_log "$k to PEM" env OPENSSL_CONF=/dev/null openssl pkey -pubin -inform DER -in "$TPM_DIR/pub/$k.der" \
			-out "$TPM_DIR/pub/$k.pem"
		;;
	*)
		with_timeout 60 "${p11[@]}" --list-objects --type pubkey \
			>"$TPM_DIR/pubkeys.txt" 2>>"$TPM_DIR/setup.log" || return 1
		point=$(awk -v id="$id" '
			/^Public Key Object/ { pt = "" }
			/^ *EC_POINT:/ { pt = $2 }
			/^ *ID:/ && $2 == id && pt != "" { print pt; exit }' "$TPM_DIR/pubkeys.txt")
		[[ $point =~ ^0441(04[0-9a-f]{128})$ ]] ||
			{ echo "unexpected CKA_EC_POINT of $k: '$point'" >&2; return 1; }
		printf '%s' "3059301306072a8648ce3d020106082a8648ce3d030107034200${BASH_REMATCH[1]}" |
			xxd -r -p >"$TPM_DIR/pub/$k.der"
		tpm_log "$k to PEM" env OPENSSL_CONF=/dev/null openssl pkey -pubin -inform DER -in "$TPM_DIR/pub/$k.der" \
			-out "$TPM_DIR/pub/$k.pem"
		;;
	esac
}

# tpm_cert KEY: DIR/certs/KEY.pem, issued by the test CA for the TPM key.
tpm_cert() {
	local k=$1 d=$TPM_DIR/certs
	[ -f "$d/ext.cnf" ] || cat >"$d/ext.cnf" <<'EOF'
[both]
basicConstraints = critical, CA:false
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
EOF
	[ -f "$d/throwaway.key" ] ||
		tpm_log "throwaway key" env OPENSSL_CONF=/dev/null openssl genpkey -algorithm EC \
			-pkeyopt ec_paramgen_curve:P-256 -out "$d/throwaway.key" || return 1
	tpm_log "csr $k" env OPENSSL_CONF=/dev/null openssl req -new -key "$d/throwaway.key" \
		-subj "/O=p11agent tests/CN=$k" -out "$d/$k.csr" &&
		tpm_log "cert $k" env OPENSSL_CONF=/dev/null openssl x509 -req -in "$d/$k.csr" -CA "$T/ca.pem" \
			-CAkey "$T/ca.key" -set_serial "0x$(openssl rand -hex 8)" -days 30 \
			-sha256 -extfile "$d/ext.cnf" -extensions both \
			-force_pubkey "$TPM_DIR/pub/$k.pem" -out "$d/$k.pem"
}

tpm_setup() {
	local tool pin sopin
	TPM_DIR=${1:-$T/tpm}
	for tool in swtpm tpm2_ptool dbus-daemon dbus-send pkcs11-tool; do
		command -v "$tool" >/dev/null ||
			tap_bail "$tool not installed (tests/packages.sh: swtpm swtpm-tools tpm2-abrmd libtpm2-pkcs11-tools)"
	done
	# in /usr/sbin, often not in a user's PATH
	TPM_ABRMD=$(command -v tpm2-abrmd || command -v /usr/sbin/tpm2-abrmd) ||
		tap_bail "tpm2-abrmd not installed (package tpm2-abrmd)"
	TPM_MODULE=$(tpm_find_module) ||
		tap_bail "libtpm2_pkcs11.so not found (package libtpm2-pkcs11-1)"
	mkdir -p "$TPM_DIR/state" "$TPM_DIR/store" "$TPM_DIR/pub" "$TPM_DIR/certs"
	chmod 0700 "$TPM_DIR"
	: >"$TPM_DIR/setup.log"
	tpm_start_swtpm || tap_bail "TPM fixture: swtpm did not start"
	TPM_BUS=unix:path=$TPM_DIR/bus
	tpm_start_bus || tap_bail "TPM fixture: no private bus"
	tpm_start_abrmd || tap_bail "TPM fixture: tpm2-abrmd did not start"
	# tpm2-pkcs11 (in every process that loads it: the agent, pkcs11-tool)
	# and tpm2-tools reach the TPM through the private resource manager.
	export TPM2_PKCS11_TCTI="tabrmd:bus_type=session,bus_name=com.intel.tss2.Tabrmd"
	export TPM2TOOLS_TCTI=$TPM2_PKCS11_TCTI TPM2_PKCS11_STORE=$TPM_DIR/store
	# tabrmd's TCTI takes a bus type, not an address: it finds "the
	# session bus" in DBUS_SESSION_BUS_ADDRESS. So the agent started after
	# this sees the private bus as its session bus too (and owns
	# org.p11agent.Agent1 there), which is harmless: nobody else is on it.
	export DBUS_SESSION_BUS_ADDRESS=$TPM_BUS
	pin=$(cat "$T/pin")
	sopin=$(openssl rand -hex 8)
	printf '%s' "$pin" >"$TPM_DIR/pin"
	printf '%s' "$sopin" >"$TPM_DIR/so-pin"
	chmod 0600 "$TPM_DIR/pin" "$TPM_DIR/so-pin"
	if ! tpm_log "tpm2_ptool init" tpm2_ptool init --path "$TPM_DIR/store" ||
		! tpm_log "tpm2_ptool addtoken" tpm2_ptool addtoken --pid=1 --label="$TPM_TOKEN" \
			--userpin="$pin" --sopin="$sopin" --path "$TPM_DIR/store" ||
		! tpm_log "tpm2_ptool addkey p256" tpm2_ptool addkey --label="$TPM_TOKEN" \
			--userpin="$pin" --algorithm=ecc256 --key-label=p256 --id=02 \
			--path "$TPM_DIR/store" ||
		! tpm_log "tpm2_ptool addkey rsa2048" tpm2_ptool addkey --label="$TPM_TOKEN" \
			--userpin="$pin" --algorithm=rsa2048 --key-label=rsa2048 --id=01 \
			--path "$TPM_DIR/store"; then
		tap_bail "TPM fixture: tpm2_ptool failed"
	fi
	pin="" sopin=""
	if ! tpm_pubkey p256 02 || ! tpm_pubkey rsa2048 01; then
		tap_bail "TPM fixture: cannot read the TPM keys' public keys"
	fi
	if ! tpm_cert p256 || ! tpm_cert rsa2048; then
		tap_bail "TPM fixture: cannot issue certificates for the TPM keys"
	fi
}

# tpm_stop: the resource manager, the bus and swtpm (in that order), after
# the agents that use them; each must end on SIGTERM (0 or 143), or
# it_finish's end check fails.
tpm_stop() {
	local i
	for ((i = ${#TPM_PIDS[@]} - 1; i >= 0; i--)); do
		stop_at_end "${TPM_PIDS[i]}" "TPM fixture process $i ($TPM_DIR)"
	done
	TPM_PIDS=()
}
