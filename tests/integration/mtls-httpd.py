#!/usr/bin/env python3
"""A static HTTPS file server that requires a client certificate.

Usage: mtls-httpd.py PORT ROOT CERT KEY CAFILE TLSVERSION LOG

Serves the files under ROOT (GET and HEAD; the query string is ignored, as
git's dumb-HTTP client needs) on 127.0.0.1:PORT, TLS version exactly
TLSVERSION (1.2 or 1.3), and only to clients whose certificate verifies
against CAFILE. Every request appends one line to LOG:
    request TLSv1.3 CN=p256 GET /repo.git/info/refs
and every failed handshake one line "handshake-error ...". Prints
"listening" on stdout once bound. Exits on SIGTERM.
"""
import http.server
import os
import signal
import socketserver
import ssl
import sys


def main():
    if len(sys.argv) != 8:
        sys.exit(__doc__)
    port, root, cert, key, cafile, version, logpath = sys.argv[1:]
    tls = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}[version]
    log = open(logpath, "a", buffering=1)

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = tls
    ctx.maximum_version = tls
    ctx.load_cert_chain(cert, key)
    ctx.load_verify_locations(cafile)
    ctx.verify_mode = ssl.CERT_REQUIRED

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=root, **kwargs)

        def log_message(self, fmt, *args):
            pass

        def send_head(self):
            peer = self.connection.getpeercert() or {}
            cn = "?"
            for rdn in peer.get("subject", ()):
                for name, value in rdn:
                    if name == "commonName":
                        cn = value
            log.write(f"request {self.connection.version()} CN={cn} "
                      f"{self.command} {self.path}\n")
            return super().send_head()

    class Server(socketserver.TCPServer):
        allow_reuse_address = True

        def get_request(self):
            sock, addr = super().get_request()
            sock.settimeout(30)
            try:
                return ctx.wrap_socket(sock, server_side=True), addr
            except OSError as e:
                # socketserver drops an OSError from get_request silently
                log.write(f"handshake-error {e!r}\n")
                sock.close()
                raise

        def handle_error(self, request, client_address):
            log.write(f"request-error {sys.exc_info()[1]!r}\n")

    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    with Server(("127.0.0.1", int(port)), Handler) as srv:
        print("listening", flush=True)
        srv.serve_forever()


if __name__ == "__main__":
    main()
