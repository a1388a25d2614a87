#!/bin/bash
# OpenSSH with token keys through p11agent-pkcs11.so, against a private
# sshd on a free loopback port (its own host key, sshd_config and
# authorized_keys under $T; UsePAM no, StrictModes no):
#  - ssh-keygen -D MODULE prints each key's public key, the token's own;
#  - ssh -I MODULE -o IdentitiesOnly=yes -i KEY.pub logs in with KEY;
#  - ssh-agent -P MODULE (the allow-list for PKCS#11 providers), ssh-add
#    -s MODULE, then ssh through the agent with KEY.
# A case passes when the command ran on the server, sshd logged "Accepted
# publickey" with KEY's fingerprint, and the agent signed.
#
# OpenSSH 9.2p1 (Debian 12) uses RSA and ECDSA keys over PKCS#11, not
# Ed25519: ssh-keygen -D says "skipping unsupported key type" for the
# Ed25519 key and "unknown certificate key type" for its certificate. So
# rsa2048, p256 and p384 here. (-i KEY.pub with IdentitiesOnly=yes is how
# ssh picks one PKCS#11 key: without the public key file, IdentitiesOnly
# drops every PKCS#11 key.)
#
# Root (CI): sshd then insists on its privilege separation directory
# /run/sshd, which only the ssh service creates; the test creates it (mode
# 0755, as the service does) when it is missing. As another user sshd runs
# without privilege separation and logs in only that user: the test logs
# in as whoever runs it.
. "$(dirname "$0")/lib-module.sh"

prog_require ssh ssh-keygen ssh-agent ssh-add
[ -x /usr/sbin/sshd ] || tap_bail "/usr/sbin/sshd not installed (openssh-server)"
mod_setup
SSH_KEYS="rsa2048 p256 p384"
S=$T/ssh
mkdir -p "$S"
chmod 0700 "$S"
ME=$(id -un) || tap_bail "no user name for uid $(id -u)"

# The public key of each token key, as OpenSSH writes it, from the
# certificate's key (mktoken.sh's pub/KEY.pem): S/KEY.pub.
for k in $SSH_KEYS; do
	ssh-keygen -i -m PKCS8 -f "$T/pub/$k.pem" >"$S/$k.pub" 2>"$S/$k.pub.err" ||
		{ tap_diag <"$S/$k.pub.err"; tap_bail "ssh-keygen -i $k failed"; }
done

# ssh-keygen -D lists the module's keys: every RSA/ECDSA key, the token's
# public key.
keygen_lists() {
	local k ok=0
	with_timeout "$IT_TIMEOUT" ssh-keygen -D "$P11MOD" >"$S/module-keys" 2>"$S/module-keys.err" ||
		{ cat "$S/module-keys.err"; return 1; }
	cat "$S/module-keys" "$S/module-keys.err"
	for k in $SSH_KEYS; do
		grep -qF "$(cut -d' ' -f1,2 "$S/$k.pub")" "$S/module-keys" ||
			{ echo "ssh-keygen -D does not list $k's public key" >&2; ok=1; }
	done
	return "$ok"
}
tap_case "ssh-keygen -D module: the RSA and ECDSA keys' public keys" keygen_lists

cat "$S"/{rsa2048,p256,p384}.pub >"$S/authorized_keys"

sshd_setup() {
	if [ "$(id -u)" -eq 0 ] && [ ! -d /run/sshd ]; then
		mkdir -m 0755 /run/sshd || return 1
	fi
	ssh-keygen -q -t ed25519 -N '' -C p11agent-test-host -f "$S/host_ed25519" || return 1
	local try
	for ((try = 0; try < 5; try++)); do
		SSHD_PORT=$(free_port)
		cat >"$S/sshd_config" <<EOF
Port $SSHD_PORT
ListenAddress 127.0.0.1
HostKey $S/host_ed25519
PidFile none
AuthorizedKeysFile $S/authorized_keys
UsePAM no
StrictModes no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
LogLevel VERBOSE
EOF
		bg sshd /usr/sbin/sshd -D -e -f "$S/sshd_config"
		SSHD_PID=$BG_PID
		wait_listen "$SSHD_PORT" "$SSHD_PID" && break
		grep -qi 'in use' "$T/sshd.log" || { cat "$T/sshd.log"; return 1; }
	done
	echo "[127.0.0.1]:$SSHD_PORT $(cat "$S/host_ed25519.pub")" >"$S/known_hosts"
}
sshd_setup >"$S/setup.log" 2>&1 || { tap_diag <"$S/setup.log"; tap_bail "sshd did not start"; }

# accepted FP: how many logins sshd accepted with the key of fingerprint FP
# (sshd -e ends its log lines with CRLF).
accepted() {
	tr -d '\r' <"$T/sshd.log" |
		grep -c "^Accepted publickey for $ME from 127.0.0.1 port [0-9]* ssh2: [A-Z]* $1\$"
}

# ssh_login KEY ARGS...: ssh ARGS as $ME to the sshd, offering only KEY
# (its public key file), runs echo; the command's output, sshd's log line
# accepting KEY's fingerprint, and the agent's counter.
ssh_login() {
	local k=$1 fp before out rc=0 i
	shift
	fp=$(ssh-keygen -lf "$S/$k.pub" | awk '{ print $2 }')
	before=$(accepted "$fp")
	sig_mark || return 1
	out=$(with_timeout "$IT_TIMEOUT" ssh -F none "$@" -o IdentitiesOnly=yes -i "$S/$k.pub" \
		-o UserKnownHostsFile="$S/known_hosts" -o StrictHostKeyChecking=yes -o BatchMode=yes \
		-o PasswordAuthentication=no -p "$SSHD_PORT" "$ME@127.0.0.1" echo p11agent-ssh-ok) || rc=$?
	echo "ssh said: $out (status $rc)"
	if [ "$rc" -ne 0 ] || [ "$out" != p11agent-ssh-ok ]; then
		tail -n 10 "$T/sshd.log" >&2
		return 1
	fi
	# sshd may write the line a moment after the session ended
	for ((i = 0; i < 50; i++)); do
		[ "$(accepted "$fp")" -gt "$before" ] && break
		sleep 0.1
	done
	[ "$i" -lt 50 ] || { echo "sshd logged no 'Accepted publickey' with $k's key $fp:" >&2
		tail -n 10 "$T/sshd.log" >&2; return 1; }
	sig_signed 1
}

for k in $SSH_KEYS; do
	tap_case "$k ssh -I module: login with the token key" ssh_login "$k" -I "$P11MOD" -o IdentityAgent=none
done

# --- through ssh-agent ----------------------------------------------------
printf '#!/bin/sh\necho\n' >"$S/askpass"
chmod 0755 "$S/askpass"
agent_setup() {
	local i
	bg ssh-agent ssh-agent -D -a "$S/agent.sock" -P "$P11MOD"
	SSH_AGENT_PID_=$BG_PID
	for ((i = 0; i < 100; i++)); do
		[ -S "$S/agent.sock" ] && break
		kill -0 "$SSH_AGENT_PID_" || { cat "$T/ssh-agent.log"; return 1; }
		sleep 0.1
	done
	[ -S "$S/agent.sock" ] || { echo "ssh-agent made no socket" >&2; return 1; }
}
agent_setup >"$S/agent-setup.log" 2>&1 || { tap_diag <"$S/agent-setup.log"; tap_bail "ssh-agent did not start"; }

# ssh-add -s asks for a PIN even for a token without CKF_LOGIN_REQUIRED
# (the module needs none): SSH_ASKPASS answers an empty line.
ssh_add() {
	local k ok=0
	SSH_AUTH_SOCK=$S/agent.sock SSH_ASKPASS=$S/askpass SSH_ASKPASS_REQUIRE=force DISPLAY='' \
		with_timeout "$IT_TIMEOUT" ssh-add -s "$P11MOD" </dev/null || return 1
	SSH_AUTH_SOCK=$S/agent.sock with_timeout "$IT_TIMEOUT" ssh-add -L >"$S/agent-keys" || return 1
	cat "$S/agent-keys"
	for k in $SSH_KEYS; do
		grep -qF "$(cut -d' ' -f1,2 "$S/$k.pub")" "$S/agent-keys" ||
			{ echo "ssh-agent does not hold $k's key" >&2; ok=1; }
	done
	return "$ok"
}
tap_case "ssh-add -s module into ssh-agent -P module: the agent holds the RSA and ECDSA keys" ssh_add

for k in $SSH_KEYS; do
	tap_case "$k ssh through ssh-agent (ssh-add -s module): login with the token key" \
		ssh_login "$k" -o IdentityAgent="$S/agent.sock"
done

tap_done
