#!/usr/bin/env python3
"""flood.py MODE SOCKET N READYFILE RELEASEFILE [TIMEOUT]

Floods the agent's unix socket with N hostile connections (test-flood.sh),
speaking raw D-Bus so that nothing is polite:
  silent   connect and send nothing (not even the auth NUL byte)
  auth     EXTERNAL authentication and BEGIN, then nothing
  call     auth, one Status call and its reply, then idle
  bigmsg   auth, then a method call whose header announces a 60 MB body,
           and the body minus its last byte (until the agent closes)
Each connection ends up open (held) or closed by the agent. Once all are
made, writes "open=O closed=C" to READYFILE (tmp + rename); then holds the
open ones until RELEASEFILE exists (at most TIMEOUT s, default 30), counts
again and writes "open=O closed=C" to READYFILE.done. Exit status 0 unless
something unexpected (a connect error, a garbled answer) happened.
"""
import os
import select
import socket
import struct
import sys
import time

BUS_PATH = b"/org/p11agent/Agent1"
BUS_IFACE = b"org.p11agent.Agent1"
BIG = 60 * 1000 * 1000


def auth(sock):
    """EXTERNAL auth and BEGIN; False if the agent closed or rejected it."""
    uid = str(os.getuid()).encode().hex().encode()
    try:
        sock.sendall(b"\0AUTH EXTERNAL " + uid + b"\r\n")
        buf = b""
        sock.settimeout(10)
        while b"\r\n" not in buf:
            chunk = sock.recv(256)
            if not chunk:
                return False
            buf += chunk
        if not buf.startswith(b"OK "):
            return False
        sock.sendall(b"BEGIN\r\n")
    except (BrokenPipeError, ConnectionResetError):
        return False
    return True


def pad8(b):
    return b + b"\0" * (-len(b) % 8)


def method_call(member, signature=b"", body_len=0, serial=1):
    """A little-endian METHOD_CALL header (body not included)."""
    fields = b""
    for code, typ, val in ((1, b"o", BUS_PATH), (2, b"s", BUS_IFACE), (3, b"s", member)):
        fields = pad8(fields) + bytes([code, 1]) + typ + b"\0"
        fields += struct.pack("<I", len(val)) + val + b"\0"
    if signature:
        fields = pad8(fields) + bytes([8, 1]) + b"g\0" + bytes([len(signature)]) + signature + b"\0"
    head = b"l" + bytes([1, 0, 1]) + struct.pack("<III", body_len, serial, len(fields))
    return pad8(head + fields)


def read_message(sock):
    """One whole message (bytes), or None if the connection closed."""
    buf = b""
    need = 16
    while len(buf) < need:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        buf += chunk
        if len(buf) >= 16:
            body_len, _, fields_len = struct.unpack("<III", buf[4:16])
            need = 16 + fields_len + (-fields_len % 8) + body_len
    return buf


def status_call(sock):
    """Sends Status and waits for its reply; False if the agent closed."""
    try:
        sock.sendall(method_call(b"Status"))
        sock.settimeout(10)
        reply = read_message(sock)
    except (BrokenPipeError, ConnectionResetError):
        return False
    if reply is None:
        return False
    if reply[1] not in (2, 3):  # METHOD_RETURN or ERROR
        raise RuntimeError("unexpected message type %d" % reply[1])
    return reply[1] == 2


def big_message(sock):
    """Announces a 60 MB 'ay' body and sends all of it but its last byte.
    False if the agent closed the connection meanwhile."""
    head = method_call(b"Sign", b"ay", BIG + 4)
    chunk = b"\0" * (1 << 20)
    sent = 0
    try:
        sock.sendall(head + struct.pack("<I", BIG))
        sock.settimeout(10)
        while sent < BIG - 1:
            n = min(len(chunk), BIG - 1 - sent)
            sock.sendall(chunk[:n])
            sent += n
    except (BrokenPipeError, ConnectionResetError):
        return False
    except socket.timeout:
        return still_open(sock)  # the agent stopped reading
    return still_open(sock)


def still_open(sock):
    r, _, _ = select.select([sock], [], [], 0)
    if not r:
        return True
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False


def report(path, held, closed_before):
    still = [s for s in held if still_open(s)]
    with open(path + ".tmp", "w") as f:
        f.write("open=%d closed=%d\n" % (len(still), closed_before + len(held) - len(still)))
    os.rename(path + ".tmp", path)


def main():
    mode, path, n, ready, release = sys.argv[1:6]
    n = int(n)
    timeout = float(sys.argv[6]) if len(sys.argv) > 6 else 30.0
    step = {"silent": lambda s: True, "auth": auth,
            "call": lambda s: auth(s) and status_call(s),
            "bigmsg": lambda s: auth(s) and big_message(s)}[mode]
    held, closed = [], 0
    for _ in range(n):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(path)
        if step(s):
            held.append(s)
        else:
            closed += 1
            s.close()
    time.sleep(0.3)
    report(ready, held, closed)
    deadline = time.monotonic() + timeout
    while not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.05)
    report(ready + ".done", held, closed)
    for s in held:
        s.close()


if __name__ == "__main__":
    main()
