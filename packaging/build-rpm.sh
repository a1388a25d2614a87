#!/bin/bash
# Builds the RPM from this source tree:
#   bash packaging/build-rpm.sh OUTDIR  ->  OUTDIR/p11agent-VERSION-1*.rpm
# Makes p11agent-VERSION.tar.gz from the tree (tracked and new files, no
# build directories) and runs rpmbuild -bb with packaging/rpm/p11agent.spec
# in a temporary _topdir. On a system without RPM build dependencies (e.g.
# Debian, where the CI checks that the spec builds) pass --nodeps:
#   bash packaging/build-rpm.sh OUTDIR --nodeps
set -euo pipefail
out=${1:?usage: bash packaging/build-rpm.sh OUTDIR [rpmbuild options]}
shift
root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/packaging/pkg-lib.sh"
mkdir -p "$out"
out=$(cd "$out" && pwd)
version=$(pkg_version "$root")
spec_version=$(sed -n 's/^Version: *//p' "$root/packaging/rpm/p11agent.spec")
if [ "$version" != "$spec_version" ]; then
	echo "build-rpm.sh: meson.build says $version, the spec says $spec_version" >&2
	exit 1
fi
command -v rpmbuild >/dev/null || { echo "build-rpm.sh: rpmbuild is not installed (Debian: apt-get install rpm)" >&2; exit 1; }

work=$(mktemp -d "${TMPDIR:-/tmp}/p11agent-rpm.XXXXXX")
trap 'rm -rf -- "$work"' EXIT
mkdir -p "$work"/{SOURCES,SPECS,BUILD,RPMS,SRPMS}
pkg_copy_tree "$root" "$work/p11agent-$version"
tar -C "$work" -czf "$work/SOURCES/p11agent-$version.tar.gz" "p11agent-$version"
cp "$root/packaging/rpm/p11agent.spec" "$work/SPECS/"
rpmbuild --define "_topdir $work" -bb "$@" "$work/SPECS/p11agent.spec" >"$work/build.log" 2>&1 || {
	tail -n 60 "$work/build.log" >&2
	echo "build-rpm.sh: rpmbuild failed" >&2
	exit 1
}
find "$work/RPMS" -name '*.rpm' -exec cp {} "$out/" \; -exec sh -c 'echo "$1/$(basename "$2")"' sh "$out" {} \;
