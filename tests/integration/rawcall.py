#!/usr/bin/env python3
"""rawcall.py SOCKET METHOD ARG...

One org.p11agent.Agent1 method call on the agent's socket, marshalled by
hand (no D-Bus library: the arguments may be what a library would refuse),
after EXTERNAL authentication. ARGs are typed: s:TEXT (a string, given as
UTF-8 on the command line), b:true|false, ay:HEX (bytes), asv:{} (an empty
a{sv}). Prints one line:
  return SIGNATURE
  error NAME MESSAGE-LENGTH-IN-BYTES VALID-UTF8(yes|no)
and then the error message itself on a second line. Exit status 0 when a
reply (return or error) came, 1 when the connection closed without one
(the agent died or hung up), 2 on bad usage. Bounded: 20 s.
"""
import os
import socket
import struct
import sys

TIMEOUT = 20.0


def pad(buf, n):
    return buf + b"\0" * ((-len(buf)) % n)


def marshal_args(args):
    """Returns (signature, body) for the typed command-line arguments."""
    sig, body = "", b""
    for a in args:
        kind, _, val = a.partition(":")
        if kind == "s":
            raw = val.encode("utf-8", "surrogateescape")
            body = pad(body, 4) + struct.pack("<I", len(raw)) + raw + b"\0"
            sig += "s"
        elif kind == "b":
            body = pad(body, 4) + struct.pack("<I", 1 if val == "true" else 0)
            sig += "b"
        elif kind == "ay":
            raw = bytes.fromhex(val)
            body = pad(body, 4) + struct.pack("<I", len(raw)) + raw
            sig += "ay"
        elif kind == "asv" and val == "{}":
            # array length, then padding to the 8-byte dict-entry alignment
            body = pad(pad(body, 4) + struct.pack("<I", 0), 8)
            sig += "a{sv}"
        else:
            sys.exit(2)
    return sig, body


def header_field(code, sigchar, value):
    raw = value.encode()
    if sigchar == "g":
        v = struct.pack("<B", len(raw)) + raw + b"\0"
    else:
        v = struct.pack("<I", len(raw)) + raw + b"\0"
    return struct.pack("<B", code) + struct.pack("<B", 1) + sigchar.encode() + b"\0" + v


def method_call(member, sig, body, serial):
    fields = b""
    for code, t, v in ((1, "o", "/org/p11agent/Agent1"), (2, "s", "org.p11agent.Agent1"),
                       (3, "s", member), (8, "g", sig)):
        fields = pad(fields, 8) + header_field(code, t, v)
    head = struct.pack("<cBBBII", b"l", 1, 0, 1, len(body), serial)
    head += struct.pack("<I", len(fields)) + fields
    return pad(head, 8) + body


def recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return buf


def read_string(buf, off, little):
    off += (-off) % 4
    n = struct.unpack_from("<I" if little else ">I", buf, off)[0]
    return buf[off + 4:off + 4 + n], off + 4 + n + 1


def parse_fields(fields, little):
    """The header fields we need: 4 error name, 8 signature."""
    out, off = {}, 0
    while off < len(fields):
        off += (-off) % 8
        code = fields[off]
        slen = fields[off + 1]
        sigchar = fields[off + 2:off + 2 + slen].decode()
        off += 2 + slen + 1
        if sigchar in ("s", "o"):
            val, off = read_string(fields, off, little)
        elif sigchar == "g":
            n = fields[off]
            val, off = fields[off + 1:off + 1 + n], off + 1 + n + 1
        elif sigchar == "u":
            off += (-off) % 4
            val, off = struct.unpack_from("<I" if little else ">I", fields, off)[0], off + 4
        else:
            raise ValueError("header field type %r" % sigchar)
        out[code] = val
    return out


def main():
    if len(sys.argv) < 3:
        sys.exit(2)
    path, member = sys.argv[1], sys.argv[2]
    sig, body = marshal_args(sys.argv[3:])
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(TIMEOUT)
    s.connect(path)
    s.sendall(b"\0AUTH EXTERNAL " + str(os.getuid()).encode().hex().encode() + b"\r\n")
    line = b""
    try:
        while b"\r\n" not in line:
            chunk = s.recv(256)
            if not chunk:
                raise EOFError
            line += chunk
        if not line.startswith(b"OK "):
            print("auth refused: %r" % line)
            return 1
        s.sendall(b"BEGIN\r\n" + method_call(member, sig, body, 1))
        while True:
            fixed = recv_exact(s, 16)
            little = fixed[0:1] == b"l"
            e = "<" if little else ">"
            mtype = fixed[1]
            body_len, _serial, flen = struct.unpack_from(e + "III", fixed, 4)
            fields = recv_exact(s, flen + ((-(16 + flen)) % 8))[:flen]
            rbody = recv_exact(s, body_len)
            hf = parse_fields(fields, little)
            if mtype == 2:
                print("return %s" % hf.get(8, b"").decode())
                return 0
            if mtype == 3:
                msg = b""
                if hf.get(8, b"").startswith(b"s"):
                    msg, _ = read_string(rbody, 0, little)
                try:
                    msg.decode("utf-8")
                    valid = "yes"
                except UnicodeDecodeError:
                    valid = "no"
                print("error %s %d %s" % (hf.get(4, b"?").decode(errors="replace"), len(msg),
                                          valid))
                print(msg.decode("utf-8", errors="backslashreplace"))
                return 0
            # signals or anything else: keep reading
    except (EOFError, ConnectionResetError, socket.timeout) as exc:
        print("no reply: %s" % (type(exc).__name__))
        return 1


if __name__ == "__main__":
    sys.exit(main())
