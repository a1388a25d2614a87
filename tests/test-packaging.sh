#!/bin/bash
# Packaging checks, TAP on stdout (run by tests/run-tests.sh after the two
# builds; needs root for apt-get and changes the system: the Debian package
# is installed, the demo runs against the installed files, then the package
# is purged again).
#   1. a `meson setup --prefix DIR` install writes only below DIR
#   2. bash packaging/build-deb.sh builds the .deb, lintian reports no errors
#   3. apt-get installs it; the p11agent user exists; p11-kit loads the
#      registered PKCS#11 module p11agent-pkcs11.so
#   4. tests/demo.sh --installed: an mTLS handshake signed by the installed
#      agent through the installed provider and openssl.cnf snippet
#   5. bash packaging/build-rpm.sh OUTDIR --nodeps builds the RPM
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 1
W=$(mktemp -d "${TMPDIR:-/tmp}/p11agent-pkg.XXXXXX")
N=0
FAILED=0
INSTALLED=0
cleanup() {
	if [ "$INSTALLED" -eq 1 ]; then
		DEBIAN_FRONTEND=noninteractive apt-get purge -y -q p11agent >/dev/null 2>&1 ||
			echo "# cleanup: apt-get purge p11agent failed; remove the package by hand" >&2
	fi
	rm -rf -- "$W"
}
trap cleanup EXIT

ok() { N=$((N + 1)); echo "ok $N - $*"; }
not_ok() {
	local desc=$1 f
	shift
	N=$((N + 1))
	FAILED=$((FAILED + 1))
	echo "not ok $N - $desc"
	for f in "$@"; do
		[ -s "$f" ] && tail -n 40 "$f" | sed 's/^/#   /'
	done
}

[ "$(id -u)" -eq 0 ] || { echo "Bail out! run as root (apt-get install of the package)"; exit 1; }

# 1. prefix install
prefix_install() {
	meson setup "$W/build-prefix" --prefix "$W/prefix" -Dtests=false &&
		meson compile -C "$W/build-prefix" &&
		DESTDIR="$W/dest" meson install -C "$W/build-prefix" --no-rebuild || return 1
	local outside
	outside=$(cd "$W/dest" && find . -type f | grep -v "^\.$W/prefix/")
	if [ -n "$outside" ]; then
		echo "installed outside the prefix $W/prefix:" >&2
		echo "$outside" >&2
		return 1
	fi
	for f in bin/p11agentd bin/p11agentctl share/dbus-1/services/org.p11agent.Agent1.service \
		lib/systemd/system/p11agentd.service lib/systemd/user/p11agentd.socket \
		lib/sysusers.d/p11agent.conf; do
		[ -e "$W/dest$W/prefix/$f" ] || { echo "missing: $W/prefix/$f" >&2; return 1; }
	done
	find "$W/dest$W/prefix" -name p11agent.so | grep -q . || { echo "provider not installed" >&2; return 1; }
	# its agent client, loaded from beside it on the first agent call
	local prov
	prov=$(find "$W/dest$W/prefix" -name p11agent.so | head -n 1)
	[ -e "$(dirname "$prov")/p11agent-bus.so" ] ||
		{ echo "p11agent-bus.so not installed beside $prov" >&2; return 1; }
	find "$W/dest$W/prefix" -path '*/pkcs11/p11agent-pkcs11.so' | grep -q . ||
		{ echo "PKCS#11 module not installed in \$libdir/pkcs11" >&2; return 1; }
	# the module file names the module where it was installed
	local modfile=$W/dest$W/prefix/share/p11-kit/modules/p11agent-pkcs11.module
	grep -qx "module: $W/prefix/.*/pkcs11/p11agent-pkcs11.so" "$modfile" &&
		grep -qx 'disable-in: p11agentd' "$modfile" ||
		{ echo "p11-kit module file missing or wrong: $modfile" >&2; cat "$modfile" >&2; return 1; }
}
if prefix_install >"$W/prefix.log" 2>&1; then
	ok "meson install --prefix DIR writes only below DIR"
else
	not_ok "meson install --prefix DIR writes only below DIR" "$W/prefix.log"
fi

# 2. Debian package
if bash packaging/build-deb.sh "$W/deb" >"$W/deb.log" 2>&1 && ls "$W"/deb/p11agent_*_*.deb >/dev/null 2>&1; then
	ok "build-deb.sh builds $(basename "$(ls "$W"/deb/p11agent_*_*.deb | head -n 1)"), no lintian errors"
	grep -E '^[WI]: ' "$W/deb.log" | sed 's/^/# lintian: /'
else
	not_ok "build-deb.sh builds the package with no lintian errors" "$W/deb.log"
fi

# 3. install
deb=$(ls "$W"/deb/p11agent_*_*.deb 2>/dev/null | grep -v dbgsym | head -n 1)
if [ -n "$deb" ] && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$deb" >"$W/install.log" 2>&1; then
	INSTALLED=1
	if getent passwd p11agent >/dev/null && [ -x /usr/bin/p11agentd ]; then
		ok "apt-get install $(basename "$deb"): /usr/bin/p11agentd and the p11agent user exist"
	else
		echo "p11agent user: $(getent passwd p11agent || echo missing)" >>"$W/install.log"
		not_ok "apt-get install: agent and p11agent user" "$W/install.log"
	fi
	# the PKCS#11 module, registered with p11-kit by file name (no agent
	# runs: p11-kit initialises it, it lists no token and does not hang)
	if [ -f "$(pkg-config p11-kit-1 --variable p11_module_path)/p11agent-pkcs11.so" ] &&
		grep -qx 'module: p11agent-pkcs11.so' /usr/share/p11-kit/modules/p11agent-pkcs11.module &&
		timeout 60 p11-kit list-modules >"$W/p11kit.log" 2>&1 &&
		grep -q '^p11agent-pkcs11: p11agent-pkcs11.so' "$W/p11kit.log"; then
		ok "the PKCS#11 module is installed and p11-kit list-modules loads it"
	else
		cat /usr/share/p11-kit/modules/p11agent-pkcs11.module >>"$W/p11kit.log" 2>&1
		not_ok "the PKCS#11 module is installed and p11-kit list-modules loads it" "$W/p11kit.log"
	fi
else
	not_ok "apt-get install the package" "$W/install.log"
fi

# 4. the demo against the installed files (no build directory on any path)
if [ "$INSTALLED" -eq 1 ] && (cd "$W" && env -u P11AGENTD -u P11AGENTCTL -u P11AGENT_SO \
	bash "$ROOT/tests/demo.sh" --installed) >"$W/demo.log" 2>&1 &&
	grep -q '^mTLS handshake OK' "$W/demo.log"; then
	ok "demo.sh --installed: $(grep '^mTLS handshake OK' "$W/demo.log" | cut -c1-90)..."
else
	not_ok "demo.sh --installed: mTLS handshake through the installed agent" "$W/demo.log"
fi

# the package leaves again (the EXIT trap purges only after an abort)
if [ "$INSTALLED" -eq 1 ]; then
	if DEBIAN_FRONTEND=noninteractive apt-get purge -y -q p11agent >"$W/purge.log" 2>&1 &&
		[ ! -e /usr/bin/p11agentd ]; then
		INSTALLED=0
		ok "apt-get purge p11agent removes it again"
	else
		not_ok "apt-get purge p11agent removes it again" "$W/purge.log"
	fi
fi

# 5. RPM
if bash packaging/build-rpm.sh "$W/rpm" --nodeps >"$W/rpm.log" 2>&1 && ls "$W"/rpm/p11agent-*.rpm >/dev/null 2>&1; then
	ok "build-rpm.sh builds $(basename "$(ls "$W"/rpm/p11agent-[0-9]*.rpm | head -n 1)") (rpmbuild --nodeps -bb)"
else
	not_ok "build-rpm.sh builds the RPM" "$W/rpm.log"
fi

echo "1..$N"
[ "$FAILED" -eq 0 ]
