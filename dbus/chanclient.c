/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The client end of a signing channel (channel.h), one per pooled
 * connection (pool.c keeps it as the connection's libdbus data): opened with
 * OpenChannel, key URIs bound to handles once, then one SIGN (or DECRYPT)
 * frame and its reply per signature (decryption). The first
 * BUS_CHAN_OPEN_AFTER uses of a connection go over D-Bus Sign (Decrypt)
 * instead: a process that
 * signs once (openssl pkeyutl, a short-lived client's one handshake) would
 * pay two round trips (OpenChannel, BIND) for nothing. lock serialises the threads that
 * share the connection. A channel that breaks is dropped and the call fails
 * as the D-Bus Sign would (Disconnected: the pool reconnects and retries);
 * an agent without channels leaves it unused (BUS_CHAN_UNAVAILABLE).
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include "chanclient.h"

struct bus_chan_client {
    pthread_mutex_t lock;
    int state;          /* CHAN_UNTRIED, CHAN_OPEN, CHAN_NONE */
    unsigned dbus_uses; /* signatures and decryptions made over D-Bus before the channel */
    int fd;
    uint32_t next_id;
    struct {
        char *uri;
        uint32_t handle;
    } binds[BUS_CHAN_MAX_HANDLES];
    unsigned n_binds;
    uint8_t out[sizeof(bus_chan_req_hdr_t) + BUS_CHAN_MAX_PAYLOAD];
    uint8_t in[sizeof(bus_chan_rep_hdr_t) + BUS_CHAN_MAX_PAYLOAD];
};

enum { CHAN_UNTRIED, CHAN_OPEN, CHAN_NONE };

void bus_chan_client_free(void *data)
{
    bus_chan_client_t *ch = data;

    if (ch->fd >= 0)
        close(ch->fd);
    for (unsigned i = 0; i < ch->n_binds; i++)
        free(ch->binds[i].uri);
    pthread_mutex_destroy(&ch->lock);
    free(ch);
}

bus_chan_client_t *bus_chan_client_new(void)
{
    bus_chan_client_t *ch = calloc(1, sizeof(*ch));

    if (!ch)
        return NULL;
    pthread_mutex_init(&ch->lock, NULL);
    ch->fd = -1;
    return ch;
}

/* The channel stops being used on this connection (ch->lock held). */
static void chan_drop_locked(bus_chan_client_t *ch)
{
    if (ch->fd >= 0)
        close(ch->fd);
    ch->fd = -1;
    ch->state = CHAN_NONE;
}

/* OpenChannel on conn (ch->lock held): CHAN_OPEN, or CHAN_NONE for an agent
 * that offers none; an error the Sign call would get as well (the agent is
 * gone, refused this client, is at its limit) is returned as is. */
static int chan_open_locked(bus_chan_client_t *ch, DBusConnection *conn,
                            bus_chan_opened_fn opened, void *opened_arg, char **errmsg)
{
    DBusMessage *call, *reply;
    DBusError err;
    int fd = -1, r = BUS_OK;
    struct stat st;

    call = dbus_message_new_method_call(NULL, BUS_PATH, BUS_IFACE, "OpenChannel");
    if (!call)
        return BUS_ERR_NO_MEMORY;
    dbus_error_init(&err);
    reply = dbus_connection_send_with_reply_and_block(conn, call, BUS_CALL_TIMEOUT_MS, &err);
    dbus_message_unref(call);
    if (!reply) {
        r = bus_err_from_name(err.name);
        if (r == BUS_ERR_DISCONNECTED || r == BUS_ERR_NOT_RUNNING || r == BUS_ERR_DENIED ||
            r == BUS_ERR_BUSY) {
            if (errmsg && asprintf(errmsg, "%s", err.message ? err.message : bus_err_str(r)) < 0)
                *errmsg = NULL;
        } else {
            ch->state = CHAN_NONE; /* an older agent: UnknownMethod */
            r = BUS_OK;
        }
        dbus_error_free(&err);
        return r;
    }
    if (!dbus_message_get_args(reply, &err, DBUS_TYPE_UNIX_FD, &fd, DBUS_TYPE_INVALID)) {
        dbus_error_free(&err);
        fd = -1;
    }
    dbus_message_unref(reply);
    if (fd < 0 || fstat(fd, &st) < 0 || !S_ISSOCK(st.st_mode)) {
        if (fd >= 0)
            close(fd);
        ch->state = CHAN_NONE;
        return BUS_OK;
    }
    /* Replies are awaited with a blocking recv (one system call, not poll
     * and recv) bounded by the call timeout. */
    {
        struct timeval tv = {.tv_sec = BUS_CALL_TIMEOUT_MS / 1000,
                             .tv_usec = (BUS_CALL_TIMEOUT_MS % 1000) * 1000};
        int fl = fcntl(fd, F_GETFL);

        if (fl < 0 || (fl & O_NONBLOCK && fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) < 0) ||
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) < 0) {
            close(fd);
            ch->state = CHAN_NONE;
            return BUS_OK;
        }
    }
    ch->fd = fd;
    ch->state = CHAN_OPEN;
    if (opened)
        opened(opened_arg, conn, fd, &st);
    return BUS_OK;
}

/* One request and its reply on the channel (ch->lock held): BUS_OK with
 * *ret_hdr and *ret_data (in ch->in), or BUS_ERR_DISCONNECTED (the agent
 * closed it), BUS_ERR_TIMEOUT or BUS_ERR_PROTOCOL; after an error the
 * channel is dropped. */
static int chan_roundtrip_locked(bus_chan_client_t *ch, size_t out_len, uint32_t id, uint8_t op,
                                 bus_chan_rep_hdr_t *ret_hdr, const uint8_t **ret_data,
                                 char **errmsg)
{
    size_t done = 0, have = 0;
    const char *why = NULL;
    int r = BUS_ERR_DISCONNECTED;

    while (done < out_len) {
        ssize_t w = send(ch->fd, ch->out + done, out_len - done, MSG_NOSIGNAL | MSG_DONTWAIT);
        struct pollfd p = {.fd = ch->fd, .events = POLLOUT};

        if (w > 0) {
            done += (size_t)w;
        } else if (w < 0 && errno == EINTR) {
            continue;
        } else if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (poll(&p, 1, BUS_CALL_TIMEOUT_MS) <= 0) {
                r = BUS_ERR_TIMEOUT;
                why = "the agent does not read its signing channel";
                goto fail;
            }
        } else {
            why = "the agent closed the signing channel";
            goto fail;
        }
    }
    for (;;) {
        long n = bus_chan_parse_reply(ch->in, have, ret_hdr, ret_data);
        ssize_t got;

        if (n > 0) {
            if (ret_hdr->id != id || ret_hdr->op != op || (size_t)n != have) {
                r = BUS_ERR_PROTOCOL;
                why = "the agent answered another request on the signing channel";
                goto fail;
            }
            return BUS_OK;
        }
        if (n < 0) {
            r = BUS_ERR_PROTOCOL;
            why = "a malformed reply on the signing channel";
            goto fail;
        }
        /* blocking, bounded by SO_RCVTIMEO (chan_open_locked) */
        got = recv(ch->fd, ch->in + have, sizeof(ch->in) - have, 0);
        if (got > 0) {
            have += (size_t)got;
        } else if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            r = BUS_ERR_TIMEOUT;
            why = "no reply from the agent on the signing channel";
            goto fail;
        } else if (got == 0 || errno != EINTR) {
            why = "the agent closed the signing channel";
            goto fail;
        }
    }
fail:
    chan_drop_locked(ch);
    if (errmsg && asprintf(errmsg, "%s", why) < 0)
        *errmsg = NULL;
    return r;
}

/* An error status from the agent: its text as *errmsg. */
static int chan_status(const bus_chan_rep_hdr_t *h, const uint8_t *data, char **errmsg)
{
    if (errmsg && !(*errmsg = strndup((const char *)data, h->len)))
        return BUS_ERR_NO_MEMORY;
    return h->status < 0 ? h->status : BUS_ERR_FAILED;
}

/* One SIGN or DECRYPT on the channel of conn, opened and the URI bound as
 * needed (see bus_chan_client_sign). A DECRYPT's reply is wiped from
 * ch->in on every path once copied out. */
static int chan_use(bus_chan_client_t *ch, DBusConnection *conn, const char *uri, uint8_t op,
                    const bus_sign_params_t *sp, const bus_decrypt_params_t *dp,
                    const uint8_t *data_in, size_t len, bus_chan_opened_fn opened,
                    void *opened_arg, uint8_t **ret_out, size_t *ret_len, char **errmsg)
{
    bus_chan_rep_hdr_t h;
    const uint8_t *data;
    uint32_t handle = 0, id;
    long n;
    int r = BUS_CHAN_UNAVAILABLE;

    pthread_mutex_lock(&ch->lock);
    if (ch->state == CHAN_UNTRIED && ch->dbus_uses < BUS_CHAN_OPEN_AFTER) {
        ch->dbus_uses++;
        goto out; /* BUS_CHAN_UNAVAILABLE: this one over D-Bus */
    }
    if (ch->state == CHAN_UNTRIED) {
        r = chan_open_locked(ch, conn, opened, opened_arg, errmsg);
        if (r < 0)
            goto out;
        r = BUS_CHAN_UNAVAILABLE;
    }
    if (ch->state != CHAN_OPEN)
        goto out;
    for (unsigned i = 0; i < ch->n_binds && !handle; i++)
        if (strcmp(ch->binds[i].uri, uri) == 0)
            handle = ch->binds[i].handle;
    if (!handle) {
        if (ch->n_binds == BUS_CHAN_MAX_HANDLES)
            goto out; /* more keys than a channel binds: D-Bus */
        id = ++ch->next_id;
        n = bus_chan_encode_bind(ch->out, id, uri);
        if (n < 0)
            goto out;
        r = chan_roundtrip_locked(ch, (size_t)n, id, BUS_CHAN_OP_BIND, &h, &data, errmsg);
        if (r < 0)
            goto out;
        if (h.status != 0) {
            r = chan_status(&h, data, errmsg);
            goto out;
        }
        ch->binds[ch->n_binds].uri = strdup(uri);
        if (!ch->binds[ch->n_binds].uri) {
            r = BUS_ERR_NO_MEMORY;
            goto out;
        }
        handle = ch->binds[ch->n_binds++].handle = h.handle;
    }
    id = ++ch->next_id;
    n = op == BUS_CHAN_OP_SIGN ? bus_chan_encode_sign(ch->out, id, handle, sp, data_in, len)
                               : bus_chan_encode_decrypt(ch->out, id, handle, dp, data_in, len);
    if (n < 0) {
        r = BUS_CHAN_UNAVAILABLE;
        goto out;
    }
    r = chan_roundtrip_locked(ch, (size_t)n, id, op, &h, &data, errmsg);
    if (r < 0)
        goto out;
    if (h.status != 0) {
        r = chan_status(&h, data, errmsg);
        goto out;
    }
    *ret_out = malloc(h.len ? h.len : 1);
    if (!*ret_out) {
        r = BUS_ERR_NO_MEMORY;
        goto out;
    }
    memcpy(*ret_out, data, h.len);
    *ret_len = h.len;
    r = BUS_OK;
out:
    /* a plaintext, whole or in part (a reply cut short), never stays here */
    if (op == BUS_CHAN_OP_DECRYPT)
        explicit_bzero(ch->in, sizeof(ch->in));
    pthread_mutex_unlock(&ch->lock);
    return r;
}

int bus_chan_client_sign(bus_chan_client_t *ch, DBusConnection *conn, const char *uri,
                         const bus_sign_params_t *p, const uint8_t *data, size_t len,
                         bus_chan_opened_fn opened, void *opened_arg, uint8_t **ret_sig,
                         size_t *ret_len, char **errmsg)
{
    return chan_use(ch, conn, uri, BUS_CHAN_OP_SIGN, p, NULL, data, len, opened, opened_arg,
                    ret_sig, ret_len, errmsg);
}

int bus_chan_client_decrypt(bus_chan_client_t *ch, DBusConnection *conn, const char *uri,
                            const bus_decrypt_params_t *p, const uint8_t *data, size_t len,
                            bus_chan_opened_fn opened, void *opened_arg, uint8_t **ret_plain,
                            size_t *ret_len, char **errmsg)
{
    return chan_use(ch, conn, uri, BUS_CHAN_OP_DECRYPT, NULL, p, data, len, opened, opened_arg,
                    ret_plain, ret_len, errmsg);
}
