#!/usr/bin/env python3
"""hold-relay.py PORTFILE GOFILE TARGET_PORT

A one-connection TCP relay on 127.0.0.1 that holds the client: it writes
its port to PORTFILE, accepts one connection, creates PORTFILE.accepted,
waits (at most 30 s) until GOFILE exists, then connects to 127.0.0.1:
TARGET_PORT and relays both ways until either side closes. The tests use it
to act between "the client has loaded its key" and "the client signs".
"""
import os
import select
import socket
import sys
import time


def main():
    portfile, gofile, target = sys.argv[1], sys.argv[2], int(sys.argv[3])
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1)
    with open(portfile + ".tmp", "w") as f:
        f.write(str(lsock.getsockname()[1]))
    os.rename(portfile + ".tmp", portfile)
    lsock.settimeout(30)
    client, _ = lsock.accept()
    open(portfile + ".accepted", "w").close()
    deadline = time.monotonic() + 30
    while not os.path.exists(gofile):
        if time.monotonic() > deadline:
            return 1
        time.sleep(0.05)
    server = socket.create_connection(("127.0.0.1", target), timeout=30)
    peers = {client: server, server: client}
    while True:
        ready, _, _ = select.select(list(peers), [], [], 30)
        if not ready:
            return 1
        for s in ready:
            try:
                data = s.recv(65536)
            except OSError:
                data = b""
            if not data:
                return 0
            try:
                peers[s].sendall(data)
            except OSError:
                return 0


if __name__ == "__main__":
    sys.exit(main())
