#!/usr/bin/env python3
"""tlsload.py PORT CA CERT KEY N THREADS [tls1_2|tls1_3]

A bounded mTLS load on an HTTPS server at 127.0.0.1:PORT: THREADS threads
make N connections in all, each a full handshake (no session reuse) with
the client certificate CERT/KEY (a software key), the server's certificate
verified against CA for the name localhost, then one GET / whose reply is
read to the end. Counts handshakes that succeeded, failed (grouped by
error) and, from a `worker=PID` in the reply, the server processes that
answered. Prints, machine-readable:
  tlsload: error count=N msg="..."
  tlsload: ok=N failed=M workers=W seconds=S rate=R/s
Exit status 0 when nothing failed.
Run it with OPENSSL_CONF=/dev/null: the client uses no provider but the
default one.
"""
import re
import socket
import ssl
import sys
import threading
import time
from collections import Counter


def main():
    port, ca, cert, key = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    n, nthreads = int(sys.argv[5]), int(sys.argv[6])
    proto = sys.argv[7] if len(sys.argv) > 7 else "tls1_3"
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(ca)
    ctx.load_cert_chain(cert, key)
    version = ssl.TLSVersion.TLSv1_3 if proto == "tls1_3" else ssl.TLSVersion.TLSv1_2
    ctx.minimum_version = ctx.maximum_version = version
    lock = threading.Lock()
    left = [n]
    ok = [0]
    errors, workers = Counter(), Counter()

    def one():
        with socket.create_connection(("127.0.0.1", port), timeout=15) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
                data = b""
                while True:
                    chunk = tls.recv(4096)
                    if not chunk:
                        break
                    data += chunk
        text = data.decode(errors="replace")
        if not text.startswith("HTTP/1.1 200") or "verify=SUCCESS" not in text:
            raise RuntimeError("unexpected reply: " + text.splitlines()[0] if text else "empty reply")
        m = re.search(r"worker=(\d+)", text)
        return m.group(1) if m else "?"

    def run():
        while True:
            with lock:
                if left[0] == 0:
                    return
                left[0] -= 1
            try:
                w = one()
            except Exception as e:  # noqa: BLE001 - every failure is counted
                with lock:
                    errors["%s: %s" % (type(e).__name__, e)] += 1
                continue
            with lock:
                ok[0] += 1
                workers[w] += 1

    t0 = time.monotonic()
    threads = [threading.Thread(target=run) for _ in range(nthreads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    secs = time.monotonic() - t0
    failed = sum(errors.values())
    for msg, count in errors.most_common(8):
        print('tlsload: error count=%d msg="%s"' % (count, msg.replace('"', "'")))
    print("tlsload: per-worker " + " ".join("%s:%d" % kv for kv in sorted(workers.items())))
    print("tlsload: ok=%d failed=%d workers=%d seconds=%.2f rate=%.0f/s"
          % (ok[0], failed, len(workers), secs, ok[0] / secs if secs > 0 else 0))
    sys.exit(0 if failed == 0 else 1)


if __name__ == "__main__":
    main()
