#!/usr/bin/env python3
"""holdconns.py SOCKET N READYFILE RELEASEFILE [TIMEOUT [call]]

Opens N connections to the agent's unix socket, one after the other, and
does the D-Bus EXTERNAL authentication on each; with "call", each then
makes one Status call and waits for its reply (the agent counts a
connection as a client from its first call; until then it is closed after
auth-timeout). Each connection ends up:
  accepted  the agent said OK, we sent BEGIN (and the call was answered),
            and it was still open 0.3 s after the last connection was made
  refused   the agent closed it (no OK), e.g. past max-clients
  rejected  the agent answered REJECTED (authentication refused)
Then writes "accepted=A refused=R rejected=J" to READYFILE (tmp + rename),
holds the accepted connections open until RELEASEFILE exists (at most
TIMEOUT s, default 30) and closes them. Exit status 0 unless something
unexpected (a connect error, a timeout waiting for an answer) happened.
"""
import os
import select
import socket
import sys
import time

from flood import status_call


def auth(sock):
    """EXTERNAL auth; returns accepted/refused/rejected."""
    uid = str(os.getuid()).encode().hex()
    try:
        sock.sendall(b"\0AUTH EXTERNAL " + uid.encode() + b"\r\n")
    except (BrokenPipeError, ConnectionResetError):
        return "refused"
    buf = b""
    sock.settimeout(5)
    while b"\r\n" not in buf:
        try:
            chunk = sock.recv(256)
        except ConnectionResetError:
            return "refused"
        if not chunk:
            return "refused"
        buf += chunk
    if buf.startswith(b"OK "):
        try:
            sock.sendall(b"BEGIN\r\n")
        except (BrokenPipeError, ConnectionResetError):
            return "refused"
        return "accepted"
    if buf.startswith(b"REJECTED"):
        return "rejected"
    raise RuntimeError("unexpected answer: %r" % buf)


def still_open(sock):
    r, _, _ = select.select([sock], [], [], 0)
    if not r:
        return True
    try:
        return sock.recv(1, socket.MSG_PEEK) != b""
    except OSError:
        return False


def main():
    path, n, ready, release = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    timeout = float(sys.argv[5]) if len(sys.argv) > 5 else 30.0
    call = len(sys.argv) > 6 and sys.argv[6] == "call"
    held, counts = [], {"accepted": 0, "refused": 0, "rejected": 0}
    for _ in range(n):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(path)
        result = auth(s)
        if result == "accepted" and call and not status_call(s):
            result = "refused"
        if result == "accepted":
            held.append(s)
        else:
            counts[result] += 1
            s.close()
    time.sleep(0.3)
    for s in list(held):
        if still_open(s):
            counts["accepted"] += 1
        else:
            counts["refused"] += 1
            held.remove(s)
            s.close()
    with open(ready + ".tmp", "w") as f:
        f.write("accepted=%(accepted)d refused=%(refused)d rejected=%(rejected)d\n" % counts)
    os.rename(ready + ".tmp", ready)
    deadline = time.monotonic() + timeout
    while not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.05)
    for s in held:
        s.close()


if __name__ == "__main__":
    main()
