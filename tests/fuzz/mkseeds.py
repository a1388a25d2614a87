#!/usr/bin/env python3
"""mkseeds.py -- writes the seed corpora under tests/fuzz/corpus/<target>/.

Run from anywhere: python3 tests/fuzz/mkseeds.py. Keys come from OpenSSL
(the `cryptography` module): the attribute values are those a SoftHSM token
holds for the same keys (CKA_MODULUS, CKA_EC_PARAMS, DER OCTET STRING
CKA_EC_POINT, CKA_VALUE of a certificate, ...). The fake module's input
layout is described in fakep11.c; the D-Bus messages are marshalled here
(little endian, version 1) as libdbus would. The keys are new on every
run, so re-running rewrites the key-bearing seeds with other bytes.
"""
import base64
import datetime
import os
import struct
import sys

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "corpus")


def write(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# --- DER key references (the format of dbus/keyref.h) ---

def tlv(tag, body):
    n = len(body)
    if n < 0x80:
        hdr = bytes([n])
    elif n < 0x100:
        hdr = bytes([0x81, n])
    else:
        hdr = bytes([0x82, n >> 8, n & 0xFF])
    return bytes([tag]) + hdr + body


def ref_p11agent(uri, kt):
    return tlv(0x30, tlv(0x02, b"\x01") + tlv(0x0C, uri.encode()) + tlv(0x0C, kt.encode()))


def ref_pk11prov(uri):
    return tlv(0x30, tlv(0x1A, b"PKCS#11 Provider URI v1.0") + tlv(0x0C, uri.encode()))


def pem(label, der):
    b = base64.b64encode(der).decode()
    lines = [b[i:i + 64] for i in range(0, len(b), 64)]
    return ("-----BEGIN %s-----\n%s\n-----END %s-----\n" % (label, "\n".join(lines), label)).encode()


URIS = [
    ("pkcs11:token=alice;object=auth;type=private", "EC"),
    ("pkcs11:model=SoftHSM%20v2;manufacturer=SoftHSM%20project;serial=1a2b3c4d5e6f7a8b;"
     "token=web;id=%01%02;object=tls;type=private", "RSA"),
    ("pkcs11:token=ed;object=sign;type=private", "ED25519"),
    ("pkcs11:object=" + "x" * 300 + ";type=private", "ED448"),
]


def keyref_seeds():
    for i, (uri, kt) in enumerate(URIS):
        write("keyref", "p11agent-%d.der" % i, ref_p11agent(uri, kt))
    write("keyref", "pkcs11-provider.der", ref_pk11prov(URIS[0][0]))
    # decoder: byte 0 even = PEM decoder, odd = key decoder (bits 1-2: type)
    write("decoder", "pem-p11agent", b"\x00" + pem("P11AGENT KEY REFERENCE", ref_p11agent(*URIS[0])))
    write("decoder", "pem-pk11prov", b"\x00" + pem("PKCS#11 PROVIDER URI", ref_pk11prov(URIS[1][0])))
    write("decoder", "pem-cert-then-ref", b"\x00" + pem("CERTIFICATE", b"\x30\x03\x02\x01\x00")
          + pem("P11AGENT KEY REFERENCE", ref_p11agent(*URIS[1])))
    write("decoder", "der-rsa", b"\x01" + ref_p11agent(*URIS[1]))
    write("decoder", "der-ec", b"\x03" + ref_p11agent(*URIS[0]))
    write("decoder", "der-ed25519", b"\x05" + ref_p11agent(*URIS[2]))


# --- agent.conf ---

CONFS = {
    "full.conf": """[agent]
module = /usr/lib/softhsm/libsofthsm2.so   # may repeat; default: p11-kit
pin-source = file:/etc/p11agent/pin        # default for every token
max-clients = 256
allow-users = root daemon
allow-groups = root
audit = all
audit-interval = 2s
idle-exit = 600
pinentry = /usr/bin/pinentry
cache-idle = 900
cache-max = 28800
always-auth = prompt
poll-interval = 2

[token pkcs11:token=hsm1]
pin-source = credential:hsm1-pin

[key pkcs11:object=web;type=private]
allow-users = www-data
allow-groups = www-data
allow-exe = /usr/sbin/nginx /usr/bin/openssl
""",
    "minimal.conf": "[agent]\nmodule = /usr/lib/softhsm/libsofthsm2.so\n",
    "refusals.conf": "[agent]\naudit = refusals\nalways-auth = stored\n\n[key pkcs11:]\nallow-users = 0\n",
    "bad.conf": "[agent]\nmax-clients = many\n[nonsense\n",
    "server-keys.conf": "[key pkcs11:object=web;type=private]\ndecrypt = yes\nconfirm = 5m\n"
                        "[key pkcs11:]\ndecrypt = no\n",
}


def conf_seeds():
    for name, text in CONFS.items():
        write("conf", name, text.encode())


# --- the fake module's model (fakep11.c) ---

ATTR = {n: i for i, n in enumerate([
    "ID", "LABEL", "KEY_TYPE", "MODULUS", "PUBLIC_EXPONENT", "EC_PARAMS", "EC_POINT", "VALUE",
    "PUBLIC_KEY_INFO", "SIGN", "ALWAYS_AUTHENTICATE", "PRIVATE", "TOKEN", "CERTIFICATE_TYPE",
    "CLASS", "MODULUS_BITS"])}
CLS = {"private": 0, "public": 1, "cert": 2, "data": 3, "secret": 4}
MECH = {"RSA_PKCS": 1, "RSA_PSS": 2, "ECDSA": 4, "EDDSA": 8}
TRUE = b"\x01"


def ulong(v):
    return struct.pack("<Q", v)


def ck_str(s):
    b = s.encode()
    return bytes([len(b)]) + b


def obj(cls, attrs, private=False, lies=None):
    out = bytes([CLS[cls], 1 if private else 0, len(attrs)])
    for name, value in attrs:
        lie = (lies or {}).get(name, 0)
        out += bytes([ATTR[name], lie]) + struct.pack("<H", len(value)) + value
    return out


def slot(objs, label="fuzz", tflags=0x01 | 0x80, sflags=0, mechs=0x0F, sign=0x0F):
    out = bytes([sflags, tflags, 4])
    out += ck_str(label) + ck_str("SoftHSM project") + ck_str("SoftHSM v2") + ck_str("1a2b3c4d5e6f")
    out += bytes([mechs, sign, len(objs)]) + b"".join(objs)
    return out


def model(slots):
    return bytes([len(slots) - 1]) + b"".join(slots)


def rsa_key():
    k = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    n = k.public_key().public_numbers()
    return k, n.n.to_bytes(256, "big"), n.e.to_bytes(3, "big")


def cert_for(key, pub):
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fuzz")])
    t = datetime.datetime(2024, 1, 1)
    c = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(pub)
         .serial_number(1).not_valid_before(t).not_valid_after(t + datetime.timedelta(days=3650))
         .sign(key, None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()))
    return c.public_bytes(serialization.Encoding.DER)


P256_PARAMS = bytes.fromhex("06082a8648ce3d030107")
ED25519_PARAMS = bytes.fromhex("130c656477617264733235353139")  # PrintableString "edwards25519"


def models():
    rk, n, e = rsa_key()
    ek = ec.generate_private_key(ec.SECP256R1())
    point = ek.public_key().public_bytes(serialization.Encoding.X962,
                                         serialization.PublicFormat.UncompressedPoint)
    ed = ed25519.Ed25519PrivateKey.generate()
    ed_pub = ed.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    ed_spki = ed.public_key().public_bytes(serialization.Encoding.DER,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    rsa_priv = obj("private", [("ID", b"\x01"), ("LABEL", b"rsa"), ("KEY_TYPE", ulong(0)),
                               ("SIGN", TRUE), ("TOKEN", TRUE), ("MODULUS", n),
                               ("PUBLIC_EXPONENT", e)])
    rsa_cert = obj("cert", [("ID", b"\x01"), ("LABEL", b"rsa"), ("TOKEN", TRUE),
                            ("CERTIFICATE_TYPE", ulong(0)), ("VALUE", cert_for(rk, rk.public_key()))])
    ec_priv = obj("private", [("ID", b"\x02"), ("LABEL", b"ec"), ("KEY_TYPE", ulong(3)),
                              ("SIGN", TRUE), ("TOKEN", TRUE), ("EC_PARAMS", P256_PARAMS)],
                  private=True)
    ec_pub = obj("public", [("ID", b"\x02"), ("LABEL", b"ec"), ("KEY_TYPE", ulong(3)),
                            ("TOKEN", TRUE), ("EC_PARAMS", P256_PARAMS),
                            ("EC_POINT", tlv(0x04, point))])
    ed_priv = obj("private", [("ID", b"\x03"), ("LABEL", b"ed"), ("KEY_TYPE", ulong(0x40)),
                              ("SIGN", TRUE), ("TOKEN", TRUE), ("EC_PARAMS", ED25519_PARAMS),
                              ("PUBLIC_KEY_INFO", ed_spki), ("ALWAYS_AUTHENTICATE", TRUE)])
    ed_pub = obj("public", [("ID", b"\x03"), ("KEY_TYPE", ulong(0x40)), ("TOKEN", TRUE),
                            ("EC_PARAMS", ED25519_PARAMS), ("EC_POINT", tlv(0x04, ed_pub))])
    return {
        "rsa": model([slot([rsa_priv, rsa_cert])]),
        "ec-login": model([slot([ec_priv, ec_pub])]),
        "ed25519": model([slot([ed_priv, ed_pub], tflags=0x01 | 0x80 | 0x02)]),
        "two-tokens": model([slot([rsa_priv], label="one", sflags=1),
                             slot([ec_priv, ec_pub], label="two", tflags=0x01 | 0x80 | 0x08)]),
        "lying": model([slot([obj("private", [("ID", b"\x01"), ("KEY_TYPE", ulong(0)),
                                              ("SIGN", TRUE), ("TOKEN", TRUE), ("MODULUS", n),
                                              ("PUBLIC_EXPONENT", e)],
                                  lies={"MODULUS": 3, "PUBLIC_EXPONENT": 1})])]),
    }


def sign_answer(rv_index, length, lie=0):
    return bytes([rv_index, lie]) + struct.pack("<H", length) + bytes(range(256)) * (length // 256) \
        + bytes(range(length % 256))


def tok_seeds(ms):
    # after the model: ops (bit0/1 login slot 0/1, bit3 rescan), then per
    # key: sign selector, salt, data length, auth; then the module's C_Login
    # and C_Sign answers, in call order (fakep11.c)
    for name, m in ms.items():
        write("tok", name, m + b"\x00" + b"\x0e\x20\x20\x00" + sign_answer(0, 256))
        write("tok", name + "-login", m + b"\x0b" + b"\x00" + b"\x8e\x20\x20\x00"
              + sign_answer(0, 64) + b"\x02\x20\x20\x01" + b"\x00" + sign_answer(0, 64))


# --- D-Bus messages ---

def align(buf, n):
    return buf + b"\x00" * (-len(buf) % n)


class Body:
    def __init__(self, header_len=0):
        self.b = b""

    def pad(self, n):
        self.b = align(self.b, n)

    def u32(self, v):
        self.pad(4)
        self.b += struct.pack("<I", v)

    def i32(self, v):
        self.pad(4)
        self.b += struct.pack("<i", v)

    def s(self, v):
        v = v.encode()
        self.u32(len(v))
        self.b += v + b"\x00"

    def g(self, v):
        self.b += bytes([len(v)]) + v.encode() + b"\x00"

    def ay(self, v):
        self.u32(len(v))
        self.b += v

    def dict_sv(self, items):
        self.u32(0)
        at = len(self.b) - 4
        self.pad(8)
        start = len(self.b)
        for k, (sig, v) in items:
            self.pad(8)
            self.s(k)
            self.g(sig)
            if sig == "s":
                self.s(v)
            else:
                self.i32(v)
        self.b = self.b[:at] + struct.pack("<I", len(self.b) - start) + self.b[at + 4:]


def method_call(member, sig="", body=b"", iface="org.p11agent.Agent1", serial=1):
    fields = Body()

    def field(code, typ, val):
        fields.pad(8)
        fields.b += bytes([code])
        fields.g(typ)
        if typ in "so":
            fields.s(val)
        else:
            fields.g(val)
    field(1, "o", "/org/p11agent/Agent1")
    if iface:
        field(2, "s", iface)
    field(3, "s", member)
    if sig:
        field(8, "g", sig)
    head = b"l" + bytes([1, 0, 1]) + struct.pack("<III", len(body), serial, len(fields.b)) + fields.b
    return align(head, 8) + body


def dbus_seeds(ms):
    key_uri = "pkcs11:token=fuzz;object=ec;type=private"
    msgs = {}
    msgs["listkeys"] = method_call("ListKeys")
    b = Body(); b.s(key_uri)
    msgs["findkeys"] = method_call("FindKeys", "s", b.b)
    b = Body(); b.s(key_uri); b.s("ecdsa"); b.dict_sv([("hash", ("s", "sha256"))]); b.ay(b"\x11" * 32)
    msgs["sign-ecdsa"] = method_call("Sign", "ssa{sv}ay", b.b)
    b = Body(); b.s(key_uri); b.s("rsa-pss")
    b.dict_sv([("hash", ("s", "sha256")), ("mgf1-hash", ("s", "sha256")), ("salt-length", ("i", 32))])
    b.ay(b"\x22" * 32)
    msgs["sign-pss"] = method_call("Sign", "ssa{sv}ay", b.b)
    b = Body(); b.s(key_uri); b.s("rsa-oaep")
    b.dict_sv([("hash", ("s", "sha256")), ("mgf1-hash", ("s", "sha1"))])
    b.ay(b"\x33" * 256)
    msgs["decrypt-oaep"] = method_call("Decrypt", "ssa{sv}ay", b.b)
    b = Body(); b.s(""); b.ay(b"1234")
    msgs["unlock"] = method_call("Unlock", "say", b.b)
    b = Body(); b.s("pkcs11:"); b.u32(1)
    msgs["lock"] = method_call("Lock", "sb", b.b)
    msgs["status"] = method_call("Status")
    msgs["listtokens"] = method_call("ListTokens")
    msgs["introspect"] = method_call("Introspect", iface="org.freedesktop.DBus.Introspectable")
    m = ms["ec-login"]
    # dispatch: model, config byte, exe (length + bytes), then calls
    exe = b"\x10/usr/bin/openssl"
    for name, raw in msgs.items():
        write("dispatch", "raw-" + name, m + b"\x00" + exe + b"\x00" + struct.pack("<H", len(raw))
              + raw + b"\x00" * 4 + sign_answer(0, 64))
    # structured: mode byte (& 3 != 0), method, flags, then arguments
    write("dispatch", "structured-sign", ms["rsa"] + b"\x01" + exe
          + b"\x01\x02\x00" + b"\x00" + b"\x01\x00" + b"\x02" + b"\x0c\x00\x00"
          + b"\x00" * 8 + sign_answer(0, 256))
    # Decrypt (rsa-raw) of the RSA key with decrypt = yes for every key
    # (config 5); the module answers 256 bytes
    b = Body(); b.s("pkcs11:token=fuzz;object=rsa;type=private"); b.s("rsa-raw"); b.dict_sv([])
    b.ay(b"\x44" * 256)
    raw = method_call("Decrypt", "ssa{sv}ay", b.b)
    write("dispatch", "raw-decrypt-rsa", ms["rsa"] + b"\x05" + exe + b"\x00"
          + struct.pack("<H", len(raw)) + raw + b"\x00" * 4 + sign_answer(0, 256))
    write("dispatch", "structured-unlock", ms["ec-login"] + b"\x04" + exe
          + b"\x01\x05\x00\x02\x04" + b"1234" + b"\x00" + b"\x00" + b"\x01\x02\x00\x00\x01\x00"
          + b"\x02" + b"\x0c\x00\x00" + b"\x00" * 8 + sign_answer(0, 64))
    # issue 9 #1: FindKeys with "x" + "é" * 600; the agent's error message
    # quoting it was cut inside a character (libdbus aborts)
    long_uri = ("x" + "\u00e9" * 600).encode()
    write("dispatch", "regression-long-utf8-uri", ms["ec-login"] + b"\x00" + exe
          + b"\x01\x01\x00\x04" + struct.pack("<H", len(long_uri)) + long_uri)
    write("dispatch", "structured-lock-status", ms["two-tokens"] + b"\x02" + exe
          + b"\x01\x06\x00\x01\x01" + b"\x01\x03\x00" + b"\x01\x04\x00" + b"\x01\x00\x00")


def module_seeds():
    """fuzz-module: a key record (layout at the top of fuzz-module.c) and
    an ECDSA signature after it."""
    def rec(kt, bits, flags, uri, label, spki, cert, sig=b""):
        f = b""
        for v in (uri, label, spki, cert):
            f += struct.pack(">H", len(v)) + v
        return bytes([kt]) + struct.pack(">H", bits) + bytes([flags]) + f + sig

    def spki_of(k):
        return k.public_key().public_bytes(serialization.Encoding.DER,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    uri = "pkcs11:model=M;manufacturer=Maker;serial=1;token=t;id=%{:02x};object={};type=private"
    rk = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    write("module", "rsa", rec(1, 2048, 3, uri.format(1, "rsa").encode(), b"rsa", spki_of(rk),
                               cert_for(rk, rk.public_key())))
    for name, curve, bits in (("p256", ec.SECP256R1(), 256), ("p384", ec.SECP384R1(), 384)):
        k = ec.generate_private_key(curve)
        sig = k.sign(b"fuzz", ec.ECDSA(hashes.SHA256()))
        write("module", name, rec(2, bits, 4, uri.format(2, name).encode(), name.encode(),
                                  spki_of(k), cert_for(k, k.public_key()), sig))
    ed = ed25519.Ed25519PrivateKey.generate()
    write("module", "ed25519", rec(3, 256, 8, uri.format(4, "ed").encode(), b"ed", spki_of(ed),
                                   cert_for(ed, ed.public_key())))
    write("module", "no-cert-binary-id", rec(3, 256, 8,
          b"pkcs11:token=t;id=%00%ff%00;object=x", b"", spki_of(ed), b""))


def main():
    keyref_seeds()
    conf_seeds()
    ms = models()
    tok_seeds(ms)
    dbus_seeds(ms)
    module_seeds()


if __name__ == "__main__":
    sys.exit(main())
