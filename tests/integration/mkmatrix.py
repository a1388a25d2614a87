#!/usr/bin/env python3
"""Print the real-program matrix (markdown) from meson test logs.

Usage: mkmatrix.py NAME=BUILD_DIR [NAME=BUILD_DIR...]
e.g.   mkmatrix.py normal=build asan=build-asan

Reads BUILD_DIR/meson-logs/testlog.json and, for every TAP case of the
form "<key> TLS 1.x <what>" or "<key> TLSv1.x <what>" (key one of the
token's rsa2048, p256, p384, ed25519), makes a row "<test>: <what>" and a
column per key and protocol. A cell is "pass" when the case passed in
every build given, "FAIL (builds)" when it failed in some, "pass (not
run: builds)" when some builds did not run it; "-" when no such case.

Cases of the tests in the 'module' suite (programs loading
p11agent-pkcs11.so) that name a key but no TLS version ("p256 ssh -I
module: ...") make a second table, a column per key.
"""
import json
import re
import sys

KEYS = ["rsa2048", "p256", "p384", "ed25519"]
PROTOS = ["1.3", "1.2"]
CASE = re.compile(r"^(ok|not ok) \d+ - (rsa2048|p256|p384|ed25519) TLS ?v?(1\.[23]):? (.*?)\s*$")
OTHER = re.compile(r"^(ok|not ok) \d+ - (rsa2048|p256|p384|ed25519) (?!TLS)(.*?)\s*$")


def cases(build):
    try:
        lines = open(f"{build}/meson-logs/testlog.json").read().splitlines()
    except OSError as e:
        sys.exit(f"mkmatrix: {e}")
    for line in lines:
        if not line.strip():
            continue
        t = json.loads(line)
        module = "+module" in t["name"].split(" / ")[0]
        for tap in t.get("stdout", "").splitlines():
            m = CASE.match(tap)
            if m:
                ok, key, proto, what = m.groups()
                yield t["name"].split(" / ")[-1], what, key, proto, ok == "ok"
                continue
            m = OTHER.match(tap) if module else None
            if m:
                ok, key, what = m.groups()
                yield t["name"].split(" / ")[-1], what, key, None, ok == "ok"


def main():
    builds = [a.split("=", 1) for a in sys.argv[1:]]
    if not builds or any(len(b) != 2 for b in builds):
        sys.exit(__doc__)
    rows = {}
    for name, build in builds:
        for test, what, key, proto, ok in cases(build):
            cell = rows.setdefault(f"{test}: {what}", {}).setdefault((key, proto), {})
            cell[name] = ok
    table(builds, {r: c for r, c in rows.items() if all(p is not None for _, p in c)},
          [(k, p) for k in KEYS for p in PROTOS])
    other = {r: c for r, c in rows.items() if any(p is None for _, p in c)}
    if other:
        print()
        print("Programs loading p11agent-pkcs11.so, cases without TLS (a column per key):")
        print()
        table(builds, other, [(k, None) for k in KEYS])


def table(builds, rows, cols):
    head = [f"{k} {p}" if p else k for k, p in cols]
    print("| program: case | " + " | ".join(head) + " |")
    print("|---|" + "---|" * len(head))
    for row in sorted(rows):
        cells = []
        for col in cols:
            r = rows[row].get(col)
            if r is None:
                cells.append("-")
                continue
            bad = [n for n, _ in builds if r.get(n) is False]
            absent = [n for n, _ in builds if n not in r]
            if bad:
                cells.append("FAIL (" + ", ".join(bad) + ")")
            elif absent:
                cells.append("pass (not run: " + ", ".join(absent) + ")")
            else:
                cells.append("pass")
        print(f"| {row} | " + " | ".join(cells) + " |")

if __name__ == "__main__":
    main()
