#!/usr/bin/env python3
"""chanraw.py MODE SOCKET ARG...

A hand-made client of the agent's signing channel (dbus/channel.h): the
D-Bus part (EXTERNAL auth, NEGOTIATE_UNIX_FD, OpenChannel) marshalled with
rawcall.py's helpers, then raw frames, hostile ones included.

  sign SOCKET URI DIGEST_HEX    bind URI, sign the digest (ecdsa/sha256),
                                print the signature in hex
  hostile SOCKET URI            every hostile frame, each checked; one line
                                per check ("ok ..." or "FAIL ..."), exit 1
                                if any failed
  stall SOCKET SECONDS          open a channel, write half a frame, wait
  decrypt SOCKET URI ALG CT_HEX [HASH MGF1 LABEL_HEX]
                                bind URI, DECRYPT (ALG 1 rsa-pkcs1, 2 rsa-oaep,
                                3 rsa-raw; HASH/MGF1 channel hash indexes),
                                print the plaintext in hex, or "decrypt
                                failed: status N" and the agent's text on a
                                second line
  hostile-decrypt SOCKET URI CT_HEX PLAIN_HEX
                                hostile DECRYPT frames, each checked, then
                                CT_HEX (rsa-pkcs1) must decrypt to PLAIN_HEX

Bounded: every read waits at most 20 s.
"""
import os
import socket
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rawcall  # noqa: E402

TIMEOUT = 20.0
REQ = struct.Struct("=HBBBBHIIiI")  # magic op alg hash mgf1 reserved id handle salt len
REP = struct.Struct("=HBBIiII")     # magic op reserved id status handle len
MAGIC = 0x4350
BIND, SIGN, DECRYPT = 1, 2, 3
PKCS1, OAEP, RAW = 1, 2, 3
ECDSA, SHA256 = 3, 3


def open_channel(path):
    """(dbus socket, channel socket); the D-Bus connection must stay open."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(TIMEOUT)
    s.connect(path)
    s.sendall(b"\0AUTH EXTERNAL " + str(os.getuid()).encode().hex().encode() + b"\r\n")
    line = b""
    while b"\r\n" not in line:
        line += s.recv(256)
    if not line.startswith(b"OK "):
        raise RuntimeError("auth refused: %r" % line)
    s.sendall(b"NEGOTIATE_UNIX_FD\r\n")
    line = b""
    while b"\r\n" not in line:
        line += s.recv(256)
    if not line.startswith(b"AGREE_UNIX_FD"):
        raise RuntimeError("no unix fd passing: %r" % line)
    s.sendall(b"BEGIN\r\n" + rawcall.method_call("OpenChannel", "", b"", 1))
    buf, fds = b"", []
    while True:
        data, got, _flags, _addr = socket.recv_fds(s, 65536, 4)
        if not data:
            raise EOFError("the agent closed the connection")
        buf += data
        fds += got
        if len(buf) >= 16:
            body_len, _serial, flen = struct.unpack_from("<III", buf, 4)
            total = 16 + flen + ((-(16 + flen)) % 8) + body_len
            if len(buf) >= total:
                break
    if buf[1] != 2 or not fds:
        raise RuntimeError("OpenChannel did not return a channel (type %d)" % buf[1])
    ch = socket.socket(fileno=fds[0])
    ch.settimeout(TIMEOUT)
    return s, ch


def second_open_refused(s):
    """A second OpenChannel on the same connection: an error reply."""
    s.sendall(rawcall.method_call("OpenChannel", "", b"", 2))
    data, _fds, _f, _a = socket.recv_fds(s, 65536, 4)
    return len(data) > 1 and data[1] == 3


def frame(op, rid, handle=0, payload=b"", alg=0, hsh=0, length=None, magic=MAGIC, reserved=0,
          mgf1=0, arg=-1):
    n = len(payload) if length is None else length
    return REQ.pack(magic, op, alg, hsh, mgf1, reserved, rid, handle, arg, n) + payload


def decrypt(ch, handle, ct, rid=2, alg=RAW, hsh=0, mgf1=0, label=b"", label_len=None):
    """A DECRYPT: the label, then the ciphertext, as the payload."""
    ll = len(label) if label_len is None else label_len
    ll = ll - (1 << 32) if ll >= (1 << 31) else ll
    ch.sendall(frame(DECRYPT, rid, handle, label + ct, alg, hsh, mgf1=mgf1, arg=ll))
    return reply(ch)


def reply(ch):
    """(id, status, handle, payload) or None when the channel closed."""
    buf = b""
    try:
        while len(buf) < REP.size:
            c = ch.recv(REP.size - len(buf))
            if not c:
                return None
            buf += c
        magic, _op, _r, rid, status, handle, n = REP.unpack(buf)
        data = b""
        while len(data) < n:
            c = ch.recv(n - len(data))
            if not c:
                return None
            data += c
    except (ConnectionResetError, BrokenPipeError):
        return None
    return rid, status, handle, data


def bind(ch, uri, rid=1):
    ch.sendall(frame(BIND, rid, payload=uri.encode()))
    return reply(ch)


def sign(ch, handle, digest, rid=2, alg=ECDSA, hsh=SHA256):
    ch.sendall(frame(SIGN, rid, handle, digest, alg, hsh))
    return reply(ch)


def closed(ch):
    """The agent closed the channel (EOF) within the timeout."""
    try:
        return ch.recv(1) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False


def mode_sign(path, uri, digest_hex):
    s, ch = open_channel(path)
    b = bind(ch, uri)
    if b is None or b[1] != 0:
        print("bind failed: %r" % (b,))
        return 1
    r = sign(ch, b[2], bytes.fromhex(digest_hex))
    if r is None or r[1] != 0:
        print("sign failed: status %s %s" % (r and r[1], r and r[3].decode(errors="replace")))
        return 1
    print(r[3].hex())
    s.close()
    return 0


def mode_hostile(path, uri):
    failed = 0
    digest = b"\x11" * 32

    def check(name, ok):
        nonlocal failed
        print(("ok " if ok else "FAIL ") + name)
        failed += 0 if ok else 1

    s, ch = open_channel(path)
    r = sign(ch, 7, digest)
    check("a handle never bound: InvalidArgs (-10), naming the handle",
          r is not None and r[1] == -10 and b"handle 7" in r[3])
    r = sign(ch, 1, digest, alg=9)
    check("an unknown algorithm: Unsupported (-8)", r is not None and r[1] == -8)
    r = bind(ch, "pkcs11:object=n\u00f6ne")
    r = sign(ch, r[2], digest) if r is not None and r[1] == 0 else None
    check("a URI of no key binds; its SIGN gets NoSuchKey (-2), naming the URI",
          r is not None and r[1] == -2 and "object=n\u00f6ne".encode() in r[3])
    ch.sendall(frame(BIND, 3, payload=b"pkcs11:object=a\0b"))
    r = reply(ch)
    check("a URI with a NUL byte: InvalidArgs", r is not None and r[1] == -10)
    ch.sendall(frame(BIND, 4, payload=b"pkcs11:object=\xc3\x28"))
    r = reply(ch)
    check("a URI with invalid UTF-8: InvalidArgs", r is not None and r[1] == -10)
    b = bind(ch, uri, 5)
    r = sign(ch, b[2], digest, 6) if b and b[1] == 0 else None
    check("the channel still signs after the refusals", r is not None and r[1] == 0 and
          r[0] == 6 and len(r[3]) > 8)
    check("a second OpenChannel on the connection is refused", second_open_refused(s))
    ch.sendall(frame(9, 7))
    check("an unknown op closes the channel", closed(ch))
    s.close()

    for name, data in (
            ("a length past the maximum closes the channel", frame(SIGN, 1, 1, length=1 << 20)),
            ("a bad magic closes the channel", frame(SIGN, 1, 1, digest, magic=0x1234)),
            ("reserved bits set close the channel", frame(SIGN, 1, 1, digest, reserved=1)),
            ("an empty BIND closes the channel", frame(BIND, 1))):
        s, ch = open_channel(path)
        ch.sendall(data)
        check(name, closed(ch))
        s.close()

    s, ch = open_channel(path)
    ch.sendall(frame(SIGN, 1, 1, digest)[:10])
    ch.close()
    s.close()
    check("a short frame, then the channel closed: nothing to answer", True)

    s, ch = open_channel(path)
    s.close()
    check("closing the D-Bus connection closes its channel", closed(ch))

    s, ch = open_channel(path)
    b = bind(ch, uri)
    r = sign(ch, b[2], digest) if b and b[1] == 0 else None
    check("after all that, a new channel signs", r is not None and r[1] == 0)
    s.close()
    return 1 if failed else 0


def mode_decrypt(path, uri, alg, ct_hex, hsh=0, mgf1=0, label_hex=""):
    s, ch = open_channel(path)
    b = bind(ch, uri)
    if b is None or b[1] != 0:
        print("bind failed: %r" % (b,))
        return 1
    r = decrypt(ch, b[2], bytes.fromhex(ct_hex), alg=int(alg), hsh=int(hsh), mgf1=int(mgf1),
                label=bytes.fromhex(label_hex))
    if r is None or r[1] != 0:
        print("decrypt failed: status %s" % (r and r[1]))
        print(r[3].decode(errors="replace") if r else "(the channel closed)")
        return 1
    print(r[3].hex())
    s.close()
    return 0


def mode_hostile_decrypt(path, uri, ct_hex, plain_hex):
    failed = 0
    ct = bytes.fromhex(ct_hex)

    def check(name, ok):
        nonlocal failed
        print(("ok " if ok else "FAIL ") + name)
        failed += 0 if ok else 1

    s, ch = open_channel(path)
    r = decrypt(ch, 7, ct, alg=PKCS1)
    check("DECRYPT: a handle never bound: InvalidArgs (-10), naming the handle",
          r is not None and r[1] == -10 and b"handle 7" in r[3])
    b = bind(ch, uri)
    h = b[2] if b and b[1] == 0 else 1
    for name, kw, status, text in (
            ("an unknown padding: Unsupported (-8), as D-Bus says it", dict(alg=9), -8,
             b"unknown decryption algorithm"),
            ("padding 0: Unsupported", dict(alg=0), -8, b"unknown decryption algorithm"),
            ("an unknown hash index: Unsupported", dict(alg=OAEP, hsh=77), -8, None),
            ("an unknown MGF1 hash index: Unsupported", dict(alg=OAEP, mgf1=6), -8, None),
            ("a label longer than the payload: InvalidArgs (-10), as D-Bus says it",
             dict(alg=OAEP, label_len=len(ct) + 1), -10, b"malformed Decrypt request"),
            ("a label length of 2^32-1: InvalidArgs", dict(alg=OAEP, label_len=0xffffffff), -10,
             None),
            ("a label that leaves no ciphertext: InvalidArgs", dict(alg=OAEP, label_len=len(ct)),
             -10, None),
            ("a label with rsa-pkcs1: InvalidArgs", dict(alg=PKCS1, label_len=8), -10, None),
            ("a hash with rsa-raw: InvalidArgs", dict(alg=RAW, hsh=3), -10, None)):
        r = decrypt(ch, h, ct, rid=3, **kw)
        check(name, r is not None and r[1] == status and r[0] == 3 and
              (text is None or text in r[3]))
    ch.sendall(frame(DECRYPT, 4, h, b"", PKCS1, arg=0))
    r = reply(ch)
    check("an empty ciphertext: InvalidArgs", r is not None and r[1] == -10)
    r = decrypt(ch, h, b"\x01" * 2049, rid=5, alg=RAW)
    check("a ciphertext past 2048 bytes: InvalidArgs", r is not None and r[1] == -10)
    r = decrypt(ch, h, ct, rid=6, alg=PKCS1)
    check("the channel still decrypts after the refusals", r is not None and r[1] == 0 and
          r[0] == 6 and r[3] == bytes.fromhex(plain_hex))
    ch.sendall(frame(DECRYPT, 7, h, ct, PKCS1, length=1 << 20))
    check("a DECRYPT longer than the maximum closes the channel", closed(ch))
    s.close()
    return 1 if failed else 0


def mode_stall(path, seconds):
    s, ch = open_channel(path)
    ch.sendall(frame(SIGN, 1, 1, b"\x22" * 32)[:30])
    print("stalled", flush=True)
    time.sleep(float(seconds))
    s.close()
    return 0


def main():
    if len(sys.argv) < 4:
        sys.exit(2)
    mode, path = sys.argv[1], sys.argv[2]
    try:
        if mode == "sign" and len(sys.argv) == 5:
            return mode_sign(path, sys.argv[3], sys.argv[4])
        if mode == "hostile":
            return mode_hostile(path, sys.argv[3])
        if mode == "stall":
            return mode_stall(path, sys.argv[3])
        if mode == "decrypt" and len(sys.argv) in (6, 9):
            return mode_decrypt(path, *sys.argv[3:])
        if mode == "hostile-decrypt" and len(sys.argv) == 6:
            return mode_hostile_decrypt(path, *sys.argv[3:])
    except (EOFError, RuntimeError, OSError) as exc:
        print("FAIL %s: %s" % (type(exc).__name__, exc))
        return 1
    sys.exit(2)


if __name__ == "__main__":
    sys.exit(main())
