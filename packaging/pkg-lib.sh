# shellcheck shell=bash
# Shared by build-deb.sh and build-rpm.sh (source it).

# pkg_version ROOT: the version meson.build declares.
pkg_version() {
	sed -n "s/^ *version *: *'\([^']*\)'.*/\1/p" "$1/meson.build" | head -n 1
}

# pkg_copy_tree ROOT DEST: the source tree as it is (tracked and new files,
# nothing git ignores, so no build directories) copied to DEST.
pkg_copy_tree() {
	local root=$1 dest=$2
	mkdir -p "$dest"
	if git -C "$root" rev-parse --git-dir >/dev/null 2>&1; then
		git -C "$root" ls-files -z --cached --others --exclude-standard |
			(cd "$root" && xargs -0 sh -c 'for f; do [ -e "$f" ] && printf "%s\0" "$f"; done' sh) |
			tar -C "$root" --null -T - -cf - | tar -C "$dest" -xf -
	else
		tar -C "$root" --exclude='./build*' --exclude=./.git -cf - . | tar -C "$dest" -xf -
	fi
}
