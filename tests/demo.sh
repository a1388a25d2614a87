#!/bin/bash
# The five-minute demo: build p11agent, make a SoftHSM token holding a P-256
# key that cannot leave it, start p11agentd, and have an unmodified
# `openssl s_client` authenticate to `openssl s_server` (which requires a
# client certificate) with that key, through the p11agent provider.
# Installs missing Debian packages first. Exits 0 on success.
#
#   bash tests/demo.sh              build in build/ and use the built files
#   bash tests/demo.sh --installed  use the installed p11agent (the Debian
#                                   package): nothing from a build directory
set -uo pipefail  # no -e: every step checks its own status (lib.sh is not errexit-safe)
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 1

say() { printf '%s\n' "$*"; }
die() {
	printf 'demo FAILED: %s\n' "$*" >&2
	exit 1
}

. tests/packages.sh
ensure_packages || die "cannot install the Debian packages needed"

INSTALLED=0
case ${1:-} in
--installed) INSTALLED=1 ;;
"") ;;
*) die "usage: bash tests/demo.sh [--installed]" ;;
esac

if [ "$INSTALLED" -eq 1 ]; then
	say "1. using the installed p11agent"
	P11AGENTD=$(command -v p11agentd) || die "p11agentd is not installed"
	P11AGENTCTL=$(command -v p11agentctl) || die "p11agentctl is not installed"
	modulesdir=$(openssl version -m | sed -n 's/^MODULESDIR: "\(.*\)"$/\1/p')
	P11AGENT_SO=$modulesdir/p11agent.so
	# the installed openssl.cnf snippet, as a user would use it
	IT_CNF=/usr/share/p11agent/openssl-p11agent.cnf
	[ -f "$IT_CNF" ] || die "$IT_CNF is not installed"
	export P11AGENTD P11AGENTCTL P11AGENT_SO
else
	say "1. building p11agent in build/"
	if [ ! -f build/meson-private/coredata.dat ]; then
		meson setup build >build-setup.log 2>&1 || {
			cat build-setup.log >&2
			die "meson setup failed"
		}
		rm -f build-setup.log
	fi
	meson compile -C build >/dev/null || die "build failed (run: meson compile -C build)"

	export P11AGENTD=$ROOT/build/agent/p11agentd
	export P11AGENTCTL=$ROOT/build/agent/p11agentctl
	export P11AGENT_SO=$ROOT/build/provider/p11agent.so
fi
for f in "$P11AGENTD" "$P11AGENTCTL" "$P11AGENT_SO"; do
	[ -e "$f" ] || die "$f was not built"
done

. tests/integration/lib.sh
# lib.sh speaks TAP to meson; here failures are plain messages.
tap_bail() { die "$*"; }

say "2. making a SoftHSM token with non-extractable keys (tests/integration/mktoken.sh)"
it_setup
# the installed snippet names no socket: the environment does
[ "$INSTALLED" -eq 0 ] || export P11AGENT_SOCKET=$SOCK
KEY=p256
URI=$(uri "$KEY")

say "3. starting p11agentd --socket $SOCK"
agent_start 2>"$T/agent-start.err" || {
	cat "$T/agent-start.err" >&2
	die "p11agentd did not start"
}
before=$(agent_signatures) || die "p11agentctl status failed"

say "4. openssl s_client -key '$URI' against openssl s_server -Verify 1"
dir=$T/demo
if ! mtls "$dir" "$URI" "$T/certs/$KEY.pem" tls1_3 2>"$T/mtls.err" ||
	! mtls_accepted "$dir" "$KEY" TLSv1.3 ECDSA 2>>"$T/mtls.err"; then
	cat "$T/mtls.err" >&2
	say "--- s_client:" >&2
	tail -n 20 "$dir/client.err" >&2
	say "--- agent log:" >&2
	tail -n 20 "$T/agent.log" >&2
	die "the mTLS handshake did not succeed"
fi
after=$(agent_signatures) || die "p11agentctl status failed"
[ "$after" -gt "$before" ] ||
	die "handshake succeeded but the agent made no signature ($before -> $after)"

subject=$(sed -n 's/^ *Subject: //p' "$dir/page" | head -n 1)
cn=$(sed -n 's/.*\(CN *= *[^,]*\).*/\1/p' <<<"$subject" | tr -d ' ')
agent_stop || true

say ""
say "mTLS handshake OK: server verified client certificate $cn; the CertificateVerify signature was made by p11agentd (signatures: $before -> $after); key never left the token"
