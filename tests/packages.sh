# shellcheck shell=bash
# Debian 12 packages needed to build p11agent and run its tests; sourced by
# tests/demo.sh, tests/run-tests.sh and .ci/run.
P11AGENT_PACKAGES=(
	meson ninja-build pkg-config gcc libc6-dev
	libssl-dev openssl
	libp11-kit-dev p11-kit p11-kit-modules
	libdbus-1-dev dbus
	libcmocka-dev
	# tests/fuzz/ (build-fuzz): clang and its libFuzzer/sanitizer runtimes
	clang libclang-rt-14-dev python3-cryptography
	softhsm2 opensc
	python3 xxd curl coreutils
	systemd util-linux passwd pinentry-tty tmux
	# real programs using token keys (tests/integration/test-<program>.sh)
	nginx haproxy stunnel4 postgresql-15 postgresql-client-15
	# keys in a TPM (lib-tpm.sh, test-tpm*.sh): swtpm, the resource
	# manager and tpm2-pkcs11 with its tpm2_ptool
	swtpm swtpm-tools tpm2-abrmd libtss2-tcti-tabrmd0 libtpm2-pkcs11-1
	libtpm2-pkcs11-tools
	# programs loading p11agent-pkcs11.so (test-gnutls, test-nss,
	# test-firefox, test-ssh)
	gnutls-bin wget git libnss3-tools firefox-esr chromium openssh-server openssh-client
	# packaging (tests/test-packaging.sh): the .deb, lintian, the RPM spec
	debhelper dpkg-dev lintian rpm
)

# ensure_packages: install whatever in P11AGENT_PACKAGES is missing (as
# root, or through sudo). Quiet when everything is there.
ensure_packages() {
	local p missing=() sudo=()
	for p in "${P11AGENT_PACKAGES[@]}"; do
		dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
	done
	[ ${#missing[@]} -gt 0 ] || return 0
	if [ "$(id -u)" -ne 0 ]; then
		if ! command -v sudo >/dev/null; then
			echo "missing packages: ${missing[*]}; run as root: apt-get install ${missing[*]}" >&2
			return 1
		fi
		sudo=(sudo)
	fi
	echo "installing: ${missing[*]}" >&2
	"${sudo[@]}" apt-get update -q >&2 &&
		"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
			apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
}
