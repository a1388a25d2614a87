#!/bin/bash
# tpm.sh [--seconds S] [--rounds N]: the TPM profile of the benchmark
# (README.md, "Benchmarks"; issue 13). A software TPM (swtpm + tpm2-abrmd
# + tpm2-pkcs11, the test fixture tests/integration/lib-tpm.sh) holds a
# P-256 and an RSA-2048 key; p11bench workers sign with them through the
# agent (`agent`: p11agent.so, EVP_DigestSign) and in-process
# (`direct-token`: libtpm2_pkcs11.so dlopen()ed, C_SignInit + C_Sign), with
# 1 and 4 client processes of one thread each. Each measurement is S
# seconds (default 3) split into N rounds (default 3) that alternate the
# two methods. Prints a table; every worker verifies its first and last
# signature. Optional: exits 77 (skipped) when swtpm, tpm2-abrmd,
# tpm2_ptool or tpm2-pkcs11 is not installed (tests/packages.sh lists
# them). Needs P11AGENTD, P11AGENTCTL, P11AGENT_SO and P11BENCH (run.sh
# --tpm and `meson test --benchmark` set them).
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

SECS=3
ROUNDS=3
while [ $# -gt 0 ]; do
	case $1 in
	--seconds) SECS=$2; shift 2 ;;
	--rounds) ROUNDS=$2; shift 2 ;;
	*) echo "usage: tpm.sh [--seconds S] [--rounds N]" >&2; exit 2 ;;
	esac
done

for tool in swtpm tpm2_ptool python3; do
	command -v "$tool" >/dev/null ||
		{ echo "tpm.sh: TPM profile skipped: $tool not installed" >&2; exit 77; }
done
command -v tpm2-abrmd >/dev/null || [ -x /usr/sbin/tpm2-abrmd ] ||
	{ echo "tpm.sh: TPM profile skipped: tpm2-abrmd not installed" >&2; exit 77; }
[ -n "${P11BENCH:-}" ] && [ -x "$P11BENCH" ] ||
	{ echo "tpm.sh: P11BENCH is not set (run through run.sh --tpm or meson)" >&2; exit 1; }

# The integration tests' fixture: temp dir, SoftHSM token and test CA
# (it_setup), the TPM (tpm_setup), the agent (agent_start); the EXIT trap
# stops all of it.
# shellcheck source=../integration/lib-prog.sh
. "$HERE/../integration/lib-prog.sh"
# shellcheck source=../integration/lib-tpm.sh
. "$HERE/../integration/lib-tpm.sh"
tpm_find_module >/dev/null ||
	{ echo "tpm.sh: TPM profile skipped: libtpm2_pkcs11.so not installed" >&2; exit 77; }
it_setup
echo "tpm.sh: software TPM and token" >&2
tpm_setup
IT_AGENT_ARGS=(--module "$TPM_MODULE")
agent_start "$T/pin" || { echo "tpm.sh: p11agentd did not start" >&2; exit 1; }

export P11BENCH_DIR=$TPM_DIR P11BENCH_TOKEN=$TPM_TOKEN P11BENCH_MODULE=$TPM_MODULE \
	P11BENCH_PROVIDER=$P11AGENT_SO P11AGENT_SOCKET=$SOCK OPENSSL_CONF=/dev/null
echo "tpm.sh: signing, $SECS s per measurement in $ROUNDS rounds" >&2
python3 - "$P11BENCH" "$SECS" "$ROUNDS" "$(uname -r)" <<'PY'
import os, struct, subprocess, sys, time

bench, secs, rounds = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
per_round = secs / rounds

def run(method, alg, clients):
    """One round: CLIENTS workers (1 thread each) start together."""
    argv = [bench, "worker", "sign", "--method", method, "--alg", alg,
            "--threads", "1", "--seconds", str(per_round)]
    procs = [subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
             for _ in range(clients)]
    for p in procs:
        line = p.stdout.readline()
        if line != b"ready\n":
            p.wait()
            sys.exit(f"tpm.sh: worker {method} {alg} failed before ready: {line!r}")
    for p in procs:
        p.stdin.write(b"go\n")
        p.stdin.flush()
    ops, elapsed, lats = 0, 0, []
    for p in procs:
        head = p.stdout.readline().split()
        if len(head) != 4 or head[0] != b"ok":
            p.wait()
            sys.exit(f"tpm.sh: worker {method} {alg} failed: {b' '.join(head)!r}")
        n_ops, ns, n_lat = int(head[1]), int(head[2]), int(head[3])
        raw = p.stdout.read(4 * n_lat)
        lats += struct.unpack(f"{n_lat}I", raw)
        ops += n_ops
        elapsed = max(elapsed, ns)
        if p.wait() != 0:
            sys.exit(f"tpm.sh: worker {method} {alg} exited {p.returncode}")
    return ops, elapsed, lats

def pct(v, q):
    v = sorted(v)
    return v[min(len(v) - 1, int(q * len(v)))] / 1e6 if v else float("nan")

rows = []
for alg in ("p256", "rsa2048-pss"):
    for clients in (1, 4):
        acc = {m: [0, 0, []] for m in ("agent", "direct-token")}
        for r in range(rounds):
            order = ("agent", "direct-token") if r % 2 == 0 else ("direct-token", "agent")
            for m in order:
                ops, ns, lats = run(m, alg, clients)
                acc[m][0] += ops
                acc[m][1] += ns
                acc[m][2] += lats
        for m in ("agent", "direct-token"):
            ops, ns, lats = acc[m]
            rows.append((alg, clients, m, ops, ops / (ns / 1e9) if ns else 0,
                         pct(lats, 0.5), pct(lats, 0.99)))

load = os.getloadavg()[0]
print(f"\nTPM profile (swtpm + tpm2-abrmd + tpm2-pkcs11), {secs:g} s per row, "
      f"loadavg {load:.2f}")
print("| key | clients | method | signatures | per s | p50 ms | p99 ms |")
print("|---|---|---|---|---|---|---|")
for alg, c, m, ops, rate, p50, p99 in rows:
    print(f"| {alg} | {c} | {m} | {ops} | {rate:.1f} | {p50:.2f} | {p99:.2f} |")
PY
rc=$?
[ "$rc" -eq 0 ] || { echo "tpm.sh: failed ($rc); agent log:" >&2; tail -n 20 "$T/agent.log" >&2; }
exit "$rc"
