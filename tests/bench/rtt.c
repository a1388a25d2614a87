/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * `p11bench worker rtt --seconds S`: bare D-Bus round trips to the agent
 * (Status(), no token involved) over one private peer-to-peer connection:
 * the transport's floor under every agent signature.
 */
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "bus.h"
#include "worker.h"

int worker_rtt(int argc, char **argv)
{
    double seconds = 3;
    const char *sock = getenv("P11AGENT_SOCKET");
    DBusConnection *conn = NULL;
    char *err = NULL;
    bus_status_t st = { 0 };
    lat_vec_t lat = { 0 };
    uint64_t start, now, ops = 0;

    for (int i = 0; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--seconds") == 0)
            seconds = atof(argv[i + 1]);
        else
            worker_fail("bad worker argument");
    }
    if (sock == NULL || bus_client_connect(sock, &conn, &err) < 0)
        worker_fail(err ? err : "P11AGENT_SOCKET is not set");
    if (bus_client_status(conn, BUS_CALL_TIMEOUT_MS, &st, &err) < 0)
        worker_fail(err);
    bus_status_clear(&st);
    worker_ready_wait();
    start = now = bench_now_ns();
    while (now - start < (uint64_t)(seconds * 1e9)) {
        uint64_t t1;

        if (bus_client_status(conn, BUS_CALL_TIMEOUT_MS, &st, &err) < 0)
            worker_fail(err);
        bus_status_clear(&st);
        t1 = bench_now_ns();
        ops++;
        if (lat_push(&lat, t1 - now) < 0)
            worker_fail("out of memory");
        now = t1;
    }
    worker_report(ops, now - start, &lat, 1);
    bus_client_close(conn);
    return 0;
}
