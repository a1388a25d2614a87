#!/usr/bin/python3
# rsakex.py HOST PORT CERT.pem KIND: one TLS 1.2 handshake with
# TLS_RSA_WITH_AES_128_CBC_SHA whose premaster secret is encrypted to the
# server's certificate with a chosen flaw, then ChangeCipherSpec and a
# Finished computed from that premaster. Prints what the server answered:
#   accepted      its ChangeCipherSpec (it derived the same keys)
#   alert N       a fatal alert (20 bad_record_mac, 51 decrypt_error, ...)
#   closed        the connection ended without an alert
# KIND (the Bleichenbacher / ROBOT probes):
#   good          a correct premaster
#   bad-type      block type 01 instead of 02
#   no-zero       no zero byte after the padding
#   zero-in-pad   a zero byte inside the eight-byte minimum padding
#   bad-version   the premaster starts with 02 00, not the ClientHello's 03 03
#   short         a 47-byte premaster (the zero one byte later)
#   long          a 49-byte premaster (the zero one byte earlier)
# A server that hides padding errors (RFC 5246, 7.4.7.1) answers every
# flawed kind as it answers a wrong Finished: bad_record_mac; "good" is
# accepted. Only the Python standard library and python3-cryptography.
import hashlib
import hmac
import os
import socket
import subprocess
import sys

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

SUITE = b"\x00\x2f"  # TLS_RSA_WITH_AES_128_CBC_SHA
VERSION = b"\x03\x03"


def prf(secret, label, seed, n):
    """TLS 1.2 PRF with SHA-256 (RFC 5246, 5)."""
    out, a = b"", label + seed
    while len(out) < n:
        a = hmac.new(secret, a, hashlib.sha256).digest()
        out += hmac.new(secret, a + label + seed, hashlib.sha256).digest()
    return out[:n]


def modulus(cert):
    out = subprocess.run(["openssl", "x509", "-in", cert, "-noout", "-modulus"],
                         check=True, capture_output=True, text=True).stdout
    return int(out.strip().split("=", 1)[1], 16)


def encoded_block(kind, k, pms):
    """The PKCS#1 v1.5 type 2 block (k bytes) carrying pms, flawed by kind."""
    body = pms
    if kind == "short":
        body = pms[1:]
    elif kind == "long":
        body = b"\x03" + pms
    pad = bytes(b % 255 + 1 for b in os.urandom(k - 3 - len(body)))  # non-zero
    em = bytearray(b"\x00\x02" + pad + b"\x00" + body)
    if kind == "bad-type":
        em[1] = 1
    elif kind == "no-zero":
        em[k - len(body) - 1] = 0x5a
    elif kind == "zero-in-pad":
        em[5] = 0
    assert len(em) == k
    return bytes(em)


class Conn:
    def __init__(self, host, port):
        self.s = socket.create_connection((host, port), timeout=20)
        # each record goes out at once (no Nagle wait for the server's ACK)
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def send_record(self, rtype, payload):
        self.s.sendall(bytes([rtype]) + VERSION + len(payload).to_bytes(2, "big") + payload)

    def record(self):
        """(type, payload) or None at the end of the stream."""
        while len(self.buf) < 5 or len(self.buf) < 5 + int.from_bytes(self.buf[3:5], "big"):
            try:
                data = self.s.recv(65536)
            except (ConnectionResetError, socket.timeout):
                data = b""
            if not data:
                return None
            self.buf += data
        n = int.from_bytes(self.buf[3:5], "big")
        rec = (self.buf[0], self.buf[5:5 + n])
        self.buf = self.buf[5 + n:]
        return rec


def handshake(host, port, cert, kind):
    n = modulus(cert)
    k = (n.bit_length() + 7) // 8
    c = Conn(host, port)
    transcript = b""

    client_random = os.urandom(32)
    # signature_algorithms: rsa_pkcs1_sha256 (without it the server assumes
    # SHA-1, which OpenSSL 3's security level 1 refuses for the certificate)
    sigalgs = b"\x00\x0d\x00\x04\x00\x02\x04\x01"
    body = (VERSION + client_random + b"\x00" + b"\x00\x04" + SUITE + b"\x00\xff" +
            b"\x01\x00" + len(sigalgs).to_bytes(2, "big") + sigalgs)
    msg = b"\x01" + len(body).to_bytes(3, "big") + body
    transcript += msg
    c.send_record(22, msg)

    server_random, hs = None, b""
    done = False
    while not done:
        rec = c.record()
        if rec is None:
            return "closed"
        if rec[0] == 21:
            return "alert %d" % rec[1][1]
        if rec[0] != 22:
            return "unexpected record %d" % rec[0]
        hs += rec[1]
        while len(hs) >= 4 and len(hs) >= 4 + int.from_bytes(hs[1:4], "big"):
            ln = int.from_bytes(hs[1:4], "big")
            m, hs = hs[:4 + ln], hs[4 + ln:]
            transcript += m
            if m[0] == 2:
                if m[4:6] != VERSION or m[4 + 2 + 32 + 1 + m[38]:][:2] != SUITE:
                    return "server chose another version or suite"
                server_random = m[6:38]
            elif m[0] == 14:
                done = True

    pms = VERSION + os.urandom(46)
    if kind == "bad-version":
        pms = b"\x02\x00" + pms[2:]
    em = encoded_block(kind, k, pms)
    ct = pow(int.from_bytes(em, "big"), 65537, n).to_bytes(k, "big")
    body = len(ct).to_bytes(2, "big") + ct
    msg = b"\x10" + len(body).to_bytes(3, "big") + body
    transcript += msg
    c.send_record(22, msg)
    c.send_record(20, b"\x01")

    ms = prf(pms, b"master secret", client_random + server_random, 48)
    kb = prf(ms, b"key expansion", server_random + client_random, 72)
    mac_key, enc_key = kb[0:20], kb[40:56]
    verify = prf(ms, b"client finished", hashlib.sha256(transcript).digest(), 12)
    fin = b"\x14\x00\x00\x0c" + verify
    mac = hmac.new(mac_key, (0).to_bytes(8, "big") + b"\x16" + VERSION +
                   len(fin).to_bytes(2, "big") + fin, hashlib.sha1).digest()
    plain = fin + mac
    padn = 15 - len(plain) % 16
    plain += bytes([padn]) * (padn + 1)
    iv = os.urandom(16)
    enc = Cipher(algorithms.AES(enc_key), modes.CBC(iv)).encryptor()
    c.send_record(22, iv + enc.update(plain) + enc.finalize())

    rec = c.record()
    if rec is None:
        return "closed"
    if rec[0] == 20:
        return "accepted"
    if rec[0] == 21:
        return "alert %d" % rec[1][1]
    return "unexpected record %d" % rec[0]


if __name__ == "__main__":
    if len(sys.argv) != 5:
        sys.exit("usage: rsakex.py HOST PORT CERT.pem KIND")
    print(handshake(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]))
