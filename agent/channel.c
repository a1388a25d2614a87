/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The agent's end of a signing channel (dbus/channel.h): a socketpair made
 * by OpenChannel, served by the thread of the D-Bus connection that asked
 * for it, with that connection's identity (uid, pid, exe as admitted) and
 * its place in the limits: a frame makes the client busy as a method call
 * does, its idle timeout covers both, closing it closes the channel. Every
 * Sign goes through agent_sign(), the path of the D-Bus Sign (lookup,
 * access, allow-exe now, confirm, login, counters, audit), and every
 * Decrypt through agent_decrypt(), the path of the D-Bus Decrypt (the same,
 * plus the key's decrypt = setting); the result is written straight into
 * the reply frame, and a plaintext is wiped from it once sent.
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "agent.h"
#include "channel.h"

/* A client that does not read its replies: the channel ends after this. */
#define CHAN_SEND_WAIT_MS 10000

typedef struct agent_chan {
    int fd;
    char *uris[BUS_CHAN_MAX_HANDLES]; /* handle i+1 */
    size_t have;        /* bytes in in */
    uint8_t in[sizeof(bus_chan_req_hdr_t) + BUS_CHAN_MAX_PAYLOAD];
    uint8_t out[sizeof(bus_chan_rep_hdr_t) + BUS_CHAN_MAX_PAYLOAD];
} agent_chan_t;

int agent_channel_open(agent_client_t *c, int *ret_fd, char **why)
{
    agent_chan_t *ch;
    int sv[2];

    if (c->chan) {
        agent_set_errmsg(why, "this connection has one open already");
        return -EBUSY;
    }
    ch = calloc(1, sizeof(*ch));
    if (!ch)
        return -ENOMEM;
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
        int r = -errno;

        agent_set_errmsg(why, "socketpair: %s", strerror(errno));
        free(ch);
        return r;
    }
    ch->fd = sv[0];
    c->chan = ch;
    agent_debug(AGENT_DBG_BUS, "client uid %ld pid %ld opened a signing channel", (long)c->uid,
                (long)c->pid);
    *ret_fd = sv[1];
    return 0;
}

void agent_channel_close(agent_client_t *c)
{
    agent_chan_t *ch = c->chan;

    if (!ch)
        return;
    c->chan = NULL;
    close(ch->fd);
    /* the counts of its uses go out now, not at the end of the interval */
    agent_audit_flush(c->agent, c, true);
    for (size_t i = 0; i < BUS_CHAN_MAX_HANDLES; i++)
        free(ch->uris[i]);
    free(ch);
}

int agent_channel_fd(const agent_client_t *c)
{
    return c->chan ? c->chan->fd : -1;
}

/* Writes a whole reply; false when the client does not take it. */
static bool send_all(int fd, const uint8_t *p, size_t n)
{
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);

        if (w > 0) {
            p += w;
            n -= (size_t)w;
        } else if (w < 0 && errno == EINTR) {
            continue;
        } else if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            struct pollfd pfd = {.fd = fd, .events = POLLOUT};

            if (poll(&pfd, 1, CHAN_SEND_WAIT_MS) <= 0)
                return false;
        } else {
            return false;
        }
    }
    return true;
}

static bool send_error(agent_chan_t *ch, const bus_chan_req_t *q, int status, const char *text)
{
    size_t n = bus_chan_encode_reply(ch->out, q->op, q->id, status, 0, text, strlen(text));

    return send_all(ch->fd, ch->out, n);
}

/* BIND: a handle for the URI (the same one again for a URI bound before).
 * The key is looked up, and access checked, at each SIGN. */
static bool answer_bind(agent_chan_t *ch, const bus_chan_req_t *q)
{
    char *uri = strndup((const char *)q->data, q->len);
    size_t free_slot = BUS_CHAN_MAX_HANDLES, n;
    uint32_t handle = 0;

    if (!uri)
        return send_error(ch, q, BUS_ERR_NO_MEMORY, "out of memory binding a key");
    if (strlen(uri) != q->len || !dbus_validate_utf8(uri, NULL)) {
        free(uri);
        return send_error(ch, q, BUS_ERR_INVALID_ARGS,
                          "a key URI must be UTF-8 text without NUL bytes");
    }
    for (size_t i = 0; i < BUS_CHAN_MAX_HANDLES && !handle; i++) {
        if (ch->uris[i] && strcmp(ch->uris[i], uri) == 0)
            handle = (uint32_t)i + 1;
        else if (!ch->uris[i] && free_slot == BUS_CHAN_MAX_HANDLES)
            free_slot = i;
    }
    if (!handle && free_slot == BUS_CHAN_MAX_HANDLES) {
        char why[120];

        free(uri);
        snprintf(why, sizeof(why), "this channel has %u keys bound already; open another "
                 "connection", BUS_CHAN_MAX_HANDLES);
        return send_error(ch, q, BUS_ERR_BUSY, why);
    }
    if (!handle) {
        ch->uris[free_slot] = uri;
        uri = NULL;
        handle = (uint32_t)free_slot + 1;
    }
    free(uri);
    n = bus_chan_encode_reply(ch->out, q->op, q->id, 0, handle, NULL, 0);
    return send_all(ch->fd, ch->out, n);
}

/* Sends the result of a key use in a reply frame, wipes the frame when it
 * held a secret (a plaintext), writes the audit record once it is sent. */
static bool send_result(agent_client_t *c, agent_chan_t *ch, const bus_chan_req_t *q,
                        agent_use_result_t *res)
{
    const char *text;
    size_t n;
    bool ok;

    if (res->status == 0) {
        n = bus_chan_encode_reply(ch->out, q->op, q->id, 0, q->handle, res->out, res->out_len);
    } else {
        text = agent_use_result_text(res);
        n = bus_chan_encode_reply(ch->out, q->op, q->id, res->status, q->handle, text,
                                  strlen(text));
    }
    ok = send_all(ch->fd, ch->out, n);
    if (res->secret)
        explicit_bzero(ch->out, n);
    if (res->status == 0 && res->audit.set)
        agent_audit_use(c->agent, c, &res->audit);
    agent_use_result_clear(res);
    return ok;
}

/* The URI bound to q's handle, or NULL with an error frame sent (*ok says
 * whether it went out). */
static const char *bound_uri(agent_chan_t *ch, const bus_chan_req_t *q, bool *ok)
{
    char buf[80];

    if (q->handle > 0 && q->handle <= BUS_CHAN_MAX_HANDLES && ch->uris[q->handle - 1])
        return ch->uris[q->handle - 1];
    snprintf(buf, sizeof(buf), "no key is bound to handle %u on this channel",
             (unsigned)q->handle);
    *ok = send_error(ch, q, BUS_ERR_INVALID_ARGS, buf);
    return NULL;
}

/* SIGN through the one path of every signature (agent_sign). */
static bool answer_sign(agent_client_t *c, agent_chan_t *ch, const bus_chan_req_t *q)
{
    agent_t *a = c->agent;
    agent_use_result_t res;
    const char *uri;
    bool ok = false;

    if (q->status < 0) {
        atomic_fetch_add(&a->sign_failures, 1);
        return send_error(ch, q, q->status, "unknown signature algorithm or hash on the "
                                            "signing channel");
    }
    uri = bound_uri(ch, q, &ok);
    if (!uri) {
        atomic_fetch_add(&a->sign_failures, 1);
        return ok;
    }
    agent_sign(c, uri, &q->params, q->data, q->len, &res);
    return send_result(c, ch, q, &res);
}

/* DECRYPT through the one path of every decryption (agent_decrypt): a
 * request the D-Bus Decrypt would refuse is refused with its words. */
static bool answer_decrypt(agent_client_t *c, agent_chan_t *ch, const bus_chan_req_t *q)
{
    agent_t *a = c->agent;
    agent_use_result_t res;
    const char *uri;
    bool ok = false;

    if (q->status < 0) {
        atomic_fetch_add(&a->decrypt_failures, 1);
        return send_error(ch, q, q->status, agent_decrypt_refusal(q->status));
    }
    uri = bound_uri(ch, q, &ok);
    if (!uri) {
        atomic_fetch_add(&a->decrypt_failures, 1);
        return ok;
    }
    agent_decrypt(c, uri, &q->dparams, q->data, q->len, &res);
    return send_result(c, ch, q, &res);
}

bool agent_channel_serve(agent_client_t *c, bool *closing)
{
    agent_chan_t *ch = c->chan;
    ssize_t got;
    bool ok = true;

    *closing = false;
    if (!ch)
        return false;
    got = recv(ch->fd, ch->in + ch->have, sizeof(ch->in) - ch->have, MSG_DONTWAIT);
    if (got == 0 || (got < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR))
        ok = false;
    else if (got > 0)
        ch->have += (size_t)got;
    while (ok) {
        bus_chan_req_t q;
        long n = bus_chan_parse_request(ch->in, ch->have, &q);
        int expected = AGENT_CONN_IDLE;

        if (n == 0)
            break;
        if (n < 0) {
            agent_warn("closed the signing channel of uid %ld pid %ld: a frame that breaks "
                       "the protocol", (long)c->uid, (long)c->pid);
            ok = false;
            break;
        }
        /* idle -> busy, as a method call makes it: a limit does not close
         * the client meanwhile; a client being closed is not served */
        if (!atomic_compare_exchange_strong(&c->state, &expected, AGENT_CONN_BUSY)) {
            *closing = true;
            ok = false;
            break;
        }
        agent_debug(AGENT_DBG_BUS, "signing channel of uid %ld pid %ld: %s, handle %u, %zu bytes",
                    (long)c->uid, (long)c->pid,
                    q.op == BUS_CHAN_OP_BIND   ? "BIND"
                    : q.op == BUS_CHAN_OP_SIGN ? "SIGN"
                                               : "DECRYPT",
                    (unsigned)q.handle, q.len);
        ok = q.op == BUS_CHAN_OP_BIND   ? answer_bind(ch, &q)
             : q.op == BUS_CHAN_OP_SIGN ? answer_sign(c, ch, &q)
                                        : answer_decrypt(c, ch, &q);
        atomic_store(&c->last_active_ms, agent_now_ms());
        expected = AGENT_CONN_BUSY;
        atomic_compare_exchange_strong(&c->state, &expected, AGENT_CONN_IDLE);
        memmove(ch->in, ch->in + n, ch->have - (size_t)n);
        ch->have -= (size_t)n;
    }
    if (!ok) {
        agent_debug(AGENT_DBG_BUS, "client uid %ld pid %ld: signing channel closed",
                    (long)c->uid, (long)c->pid);
        agent_channel_close(c);
    }
    return ok;
}
