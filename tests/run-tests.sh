#!/bin/bash
# The whole test suite, twice: a normal build (build/) and an ASan+UBSan
# build (build-asan/); then the fuzz targets (build-fuzz/, clang). Installs
# missing Debian packages first. A skipped test counts as a failure (CI must
# not pass by skipping). The last line is "N passed, M failed", totals over
# all builds.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 1
. tests/packages.sh
ensure_packages || { echo "cannot install the packages needed"; echo "0 passed, 1 failed"; exit 1; }

PASSED=0
FAILED=0

# tally DIR: add DIR's meson-logs/testlog.json to PASSED/FAILED; a test
# passes only with result OK and no "# SKIP" TAP line. Prints the others.
tally() {
	local counts
	counts=$(python3 - "$1/meson-logs/testlog.json" <<'PY'
import json, re, sys
ok = bad = 0
try:
    lines = open(sys.argv[1]).read().splitlines()
except OSError:
    lines = []
for line in lines:
    if not line.strip():
        continue
    t = json.loads(line)
    out = t.get("stdout", "").splitlines()
    skips = [l for l in out if re.match(r"(not )?ok\b.*#\s*skip", l, re.I)]
    # A TAP script that stopped early (no plan, or fewer cases than its
    # plan) must not pass: meson accepts a TAP stream without a plan.
    cases = [l for l in out if re.match(r"(not )?ok\b", l)]
    plans = [int(m.group(1)) for l in out for m in [re.match(r"1\.\.(\d+)\s*$", l)] if m]
    truncated = ("integration" in t["name"] or cases) and \
        (len(plans) != 1 or plans[0] != len(cases) or plans[0] == 0)
    if t["result"] == "OK" and not skips and not truncated:
        ok += 1
        continue
    bad += 1
    why = t["result"] if t["result"] != "OK" else \
        "TAP stream without a matching plan" if truncated else "skipped TAP cases"
    print(f"  {why}: {t['name']}", file=sys.stderr)
    for l in skips:
        print(f"    {l}", file=sys.stderr)
print(ok, bad)
PY
	) || counts="0 1"
	PASSED=$((PASSED + ${counts% *}))
	FAILED=$((FAILED + ${counts#* }))
	[ "${counts#* }" -eq 0 ]
}

# suite DIR [MESON SETUP ARGS...]: configure (once), build, test, tally.
suite() {
	local dir=$1 rc=0
	shift
	echo "=== $dir"
	if [ ! -f "$dir/meson-private/coredata.dat" ]; then
		meson setup "$dir" "$@" || { echo "meson setup $dir failed"; FAILED=$((FAILED + 1)); return 1; }
	fi
	meson compile -C "$dir" || { echo "build in $dir failed"; FAILED=$((FAILED + 1)); return 1; }
	rm -f "$dir/meson-logs/testlog.json"
	meson test -C "$dir" --print-errorlogs "${TEST_ARGS[@]}" || rc=$?
	if ! tally "$dir" || [ "$rc" -ne 0 ]; then
		echo "$dir: failures (meson test status $rc)"
		# a failing meson test run with nothing tallied still counts once
		[ "$rc" -eq 0 ] || [ -s "$dir/meson-logs/testlog.json" ] || FAILED=$((FAILED + 1))
		return 1
	fi
}

TEST_ARGS=()
suite build -Dwerror=true

# ASan+UBSan. Slower: a longer meson timeout and client timeout. Leak
# checking stays on everywhere (meson's ASAN_OPTIONS defaults); the
# integration tests preload libasan into openssl(1), which loads the
# instrumented provider (see tests/integration/lib.sh). curl and psql
# cannot run with libasan preloaded: they load the normal build's provider
# (P11AGENT_PLAIN_SO, see prog_unsanitized in lib-prog.sh) and talk to the
# ASan-built agent; so do the programs that load the PKCS#11 module
# (P11AGENT_PLAIN_MODULE, module_for_tools in lib-prog.sh).
TEST_ARGS=(--timeout-multiplier 3)
P11AGENT_PLAIN_SO=$ROOT/build/provider/p11agent.so \
	P11AGENT_PLAIN_MODULE=$ROOT/build/module/p11agent-pkcs11.so P11AGENT_TEST_TIMEOUT=90 suite build-asan -Dwerror=true -Db_sanitize=address,undefined -Db_lundef=false

# libFuzzer targets (tests/fuzz/): clang, ASan+UBSan, coverage; each
# replays its committed corpus, then fuzzes for a short while (fuzz_seconds).
TEST_ARGS=(--suite fuzz)
CC=clang suite build-fuzz -Dwerror=true -Dfuzzing=true -Db_sanitize=address,undefined \
	-Db_lundef=false

# Packages (root only: it installs the .deb with apt and purges it again):
# prefix install, Debian package + lintian, the demo against the installed
# files, the RPM spec. Each TAP case counts once.
echo "=== packaging"
if [ "$(id -u)" -eq 0 ]; then
	bash tests/test-packaging.sh >build/packaging.tap 2>&1
	cat build/packaging.tap
	ok=$(grep -c '^ok ' build/packaging.tap)
	bad=$(grep -c '^not ok \|^Bail out' build/packaging.tap)
	[ "$ok" -gt 0 ] || bad=$((bad + 1))
	PASSED=$((PASSED + ok))
	FAILED=$((FAILED + bad))
else
	echo "packaging: not run (needs root to install the package); counted as a failure"
	FAILED=$((FAILED + 1))
fi

echo "$PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
