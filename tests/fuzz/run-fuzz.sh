#!/bin/bash
# Runs a libFuzzer target as a meson test (tests/fuzz/meson.build).
#   run-fuzz.sh replay EXE CORPUS_DIR
#       every committed input once (seeds and regression inputs)
#   run-fuzz.sh run EXE CORPUS_DIR WORK_DIR SECONDS [DICT]
#       fuzzes for SECONDS from CORPUS_DIR; new inputs and crash files go to
#       WORK_DIR (in the build tree), never into the source tree
set -euo pipefail
mode=$1 exe=$2 corpus=$3
[ -d "$corpus" ] || { echo "no corpus directory $corpus" >&2; exit 1; }
# Leaks fail the run; UBSan findings stop it (meson sets these too). Exit
# code 1 on a finding: libFuzzer's default, 77, is "skipped" to meson.
export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:abort_on_error=1:print_stacktrace=1}
case $mode in
replay)
	mapfile -t files < <(find "$corpus" -type f | sort)
	[ ${#files[@]} -gt 0 ] || { echo "empty corpus $corpus" >&2; exit 1; }
	echo "replaying ${#files[@]} inputs from $corpus"
	exec "$exe" -timeout=10 -rss_limit_mb=2048 -error_exitcode=1 -timeout_exitcode=1 "${files[@]}"
	;;
run)
	work=$4 seconds=$5 dict=${6:-}
	mkdir -p "$work/new" "$work/artifacts"
	args=(-max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
	      -error_exitcode=1 -timeout_exitcode=1
	      -artifact_prefix="$work/artifacts/")
	[ -z "$dict" ] || args+=(-dict="$dict")
	exec "$exe" "${args[@]}" "$work/new" "$corpus"
	;;
*)
	echo "usage: $0 replay|run ..." >&2
	exit 2
	;;
esac
