#!/bin/bash
# run.sh [bench.sh options]: the full benchmark (README.md, "Benchmarks").
# run.sh --tpm [tpm.sh options]: only the TPM profile (tests/bench/tpm.sh).
# Installs missing Debian packages, builds build/ (meson setup if needed),
# then runs tests/bench/bench.sh with 3 s per measurement, 30 fresh-process
# runs, the 100-key memory measurement and a 1,000,000-signature soak,
# printing the table and writing build/bench.json. Later options override
# these (e.g. --soak 200000 --seconds 1).
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT" || exit 1
. tests/packages.sh
ensure_packages || { echo "cannot install the packages needed" >&2; exit 1; }

if [ ! -f build/meson-private/coredata.dat ]; then
	meson setup build -Dwerror=true >/dev/null || { echo "meson setup failed" >&2; exit 1; }
fi
meson compile -C build >/dev/null || { meson compile -C build; exit 1; }

export P11FAULT_SO=$ROOT/build/tests/fault/p11fault.so # the latency-bound profile
export P11AGENTD=$ROOT/build/agent/p11agentd
export P11AGENTCTL=$ROOT/build/agent/p11agentctl
export P11AGENT_SO=$ROOT/build/provider/p11agent.so
export P11BENCH=$ROOT/build/tests/bench/p11bench
export P11BENCH_FIRST=$ROOT/build/tests/bench/p11bench-first
if [ "${1:-}" = --tpm ]; then
	shift
	exec bash tests/bench/tpm.sh "$@"
fi
exec bash tests/bench/bench.sh --seconds 3 --runs 30 --many-keys --soak 1000000 \
	--json "$ROOT/build/bench.json" "$@"
