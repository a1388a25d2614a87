#!/usr/bin/env python3
"""mkref.py FORMAT URI [TYPE] -- print a key-reference PEM file on stdout.

FORMAT is "p11agent" (SEQUENCE { INTEGER 1, UTF8String uri, UTF8String
type }, label P11AGENT KEY REFERENCE) or "pkcs11-provider" (SEQUENCE {
VisibleString desc, UTF8String uri }, label PKCS#11 PROVIDER URI). Written
independently of the C code so that the tests check the documented format,
and so they can name keys that p11agentctl would refuse to reference.
"""
import base64
import sys


def tlv(tag, body):
    n = len(body)
    if n < 0x80:
        length = bytes([n])
    elif n < 0x100:
        length = bytes([0x81, n])
    else:
        length = bytes([0x82, n >> 8, n & 0xFF])
    return bytes([tag]) + length + body


def main():
    fmt, uri = sys.argv[1], sys.argv[2].encode()
    if fmt == "p11agent":
        der = tlv(0x30, tlv(0x02, b"\x01") + tlv(0x0C, uri) + tlv(0x0C, sys.argv[3].encode()))
        label = "P11AGENT KEY REFERENCE"
    elif fmt == "pkcs11-provider":
        der = tlv(0x30, tlv(0x1A, b"PKCS#11 Provider URI v1.0") + tlv(0x0C, uri))
        label = "PKCS#11 PROVIDER URI"
    else:
        sys.exit("mkref.py: unknown format " + fmt)
    b64 = base64.b64encode(der).decode()
    print("-----BEGIN %s-----" % label)
    for i in range(0, len(b64), 64):
        print(b64[i:i + 64])
    print("-----END %s-----" % label)


main()
