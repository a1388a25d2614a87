#!/bin/bash
# Builds the Debian package from this source tree:
#   bash packaging/build-deb.sh OUTDIR   ->  OUTDIR/p11agent_VERSION_ARCH.deb
# The tree (tracked and new files, no build directories) is copied to a
# temporary directory, packaging/debian becomes its debian/, and
# dpkg-buildpackage builds the binary package there. Missing build
# dependencies are installed when running as root. lintian runs if
# installed; any lintian error fails the build (warnings are printed).
set -euo pipefail
out=${1:?usage: bash packaging/build-deb.sh OUTDIR}
root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/packaging/pkg-lib.sh"
mkdir -p "$out"
out=$(cd "$out" && pwd)
version=$(pkg_version "$root")
changelog=$(sed -n '1s/^p11agent (\([^)]*\)).*/\1/p' "$root/packaging/debian/changelog")
if [ "$version" != "$changelog" ]; then
	echo "build-deb.sh: meson.build says $version, packaging/debian/changelog says $changelog" >&2
	exit 1
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/p11agent-deb.XXXXXX")
trap 'rm -rf -- "$work"' EXIT
src=$work/p11agent-$version
pkg_copy_tree "$root" "$src"
cp -r "$root/packaging/debian" "$src/debian"
cp "$root/packaging/systemd/p11agent.sysusers.conf" "$src/debian/p11agent.sysusers"

cd "$src"
if ! dpkg-checkbuilddeps 2>"$work/deps"; then
	missing=$(sed -n 's/.*Unmet build dependencies: //p' "$work/deps" | sed 's/([^)]*)//g; s/|[^ ]*//g')
	if [ "$(id -u)" -ne 0 ]; then
		cat "$work/deps" >&2
		echo "build-deb.sh: install the build dependencies above (as root: apt-get install $missing)" >&2
		exit 1
	fi
	echo "build-deb.sh: installing build dependencies: $missing" >&2
	# shellcheck disable=SC2086 # a list of package names
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing >&2
fi
dpkg-buildpackage -b -us -uc >"$work/build.log" 2>&1 || {
	tail -n 60 "$work/build.log" >&2
	echo "build-deb.sh: dpkg-buildpackage failed" >&2
	exit 1
}
debs=("$work"/*.deb)
cp "${debs[@]}" "$out/"
for d in "${debs[@]}"; do
	echo "$out/$(basename "$d")"
done
if command -v lintian >/dev/null; then
	# lintian refuses to run as root without this
	lintian --allow-root --fail-on error --suppress-tags-from-file /dev/null "$work"/*.changes >&2 || {
		echo "build-deb.sh: lintian reported errors" >&2
		exit 1
	}
fi
