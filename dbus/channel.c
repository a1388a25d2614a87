/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Frames of the signing channel (see channel.h): encoding and the parsers
 * both ends use. No I/O here; every length is checked before it is used. */
#include <string.h>

#include "channel.h"

/* Hash names the channel carries, by index (0: none). */
static const char *const chan_hashes[] = {"", "sha1", "sha224", "sha256", "sha384", "sha512"};
#define N_HASHES (sizeof(chan_hashes) / sizeof(chan_hashes[0]))

int bus_chan_hash_index(const char *name)
{
    for (size_t i = 0; i < N_HASHES; i++)
        if (strcmp(chan_hashes[i], name) == 0)
            return (int)i;
    return -1;
}

/* The parameters of a whole DECRYPT frame into r (label and ciphertext
 * point into the payload). BUS_OK, or the error it is answered with, in
 * the order of the D-Bus Decrypt's checks (bus_parse_decrypt_call): an
 * unknown algorithm first, then what that call finds malformed. */
static int parse_decrypt(const bus_chan_req_hdr_t *h, const uint8_t *payload, bus_chan_req_t *r)
{
    size_t data_len;

    if (h->alg < BUS_DEC_RSA_PKCS1 || h->alg > BUS_DEC_RSA_RAW || h->hash >= N_HASHES ||
        h->mgf1 >= N_HASHES)
        return BUS_ERR_UNSUPPORTED;
    /* h->len <= BUS_CHAN_MAX_PAYLOAD (checked): no overflow below */
    if (h->label_len > h->len || h->label_len > BUS_DECRYPT_MAX_LABEL)
        return BUS_ERR_INVALID_ARGS;
    data_len = h->len - h->label_len;
    if (data_len == 0 || data_len > BUS_DECRYPT_MAX_DATA)
        return BUS_ERR_INVALID_ARGS;
    if (h->alg != BUS_DEC_RSA_OAEP && (h->hash || h->mgf1 || h->label_len))
        return BUS_ERR_INVALID_ARGS; /* parameters only OAEP takes */
    r->dparams.alg = (bus_dec_alg_t)h->alg;
    strcpy(r->dparams.hash, chan_hashes[h->hash]);
    strcpy(r->dparams.mgf1_hash, chan_hashes[h->mgf1]);
    r->dparams.label = h->label_len ? payload : NULL;
    r->dparams.label_len = h->label_len;
    r->data = payload + h->label_len;
    r->len = data_len;
    return BUS_OK;
}

long bus_chan_parse_request(const uint8_t *buf, size_t avail, bus_chan_req_t *ret)
{
    bus_chan_req_hdr_t h;
    bus_chan_req_t r = {0};

    if (avail < sizeof(h))
        return 0;
    memcpy(&h, buf, sizeof(h));
    if (h.magic != BUS_CHAN_MAGIC || h.reserved != 0 || h.len > BUS_CHAN_MAX_PAYLOAD)
        return BUS_ERR_PROTOCOL;
    if (h.op == BUS_CHAN_OP_BIND) {
        if (h.alg || h.hash || h.mgf1 || h.handle || h.len == 0 || h.len > BUS_CHAN_MAX_URI)
            return BUS_ERR_PROTOCOL;
    } else if (h.op != BUS_CHAN_OP_SIGN && h.op != BUS_CHAN_OP_DECRYPT) {
        return BUS_ERR_PROTOCOL;
    }
    if (avail - sizeof(h) < h.len)
        return 0;
    r.op = h.op;
    r.id = h.id;
    r.handle = h.handle;
    r.data = buf + sizeof(h);
    r.len = h.len;
    if (h.op == BUS_CHAN_OP_SIGN) {
        /* the frame is whole: an unknown algorithm is answered, not fatal */
        if (h.alg < BUS_SIG_RSA_PKCS1 || h.alg > BUS_SIG_EDDSA || h.hash >= N_HASHES ||
            h.mgf1 >= N_HASHES || (h.alg == BUS_SIG_RSA_PSS && h.salt_len < 0)) {
            r.status = BUS_ERR_UNSUPPORTED;
            *ret = r;
            return (long)(sizeof(h) + h.len);
        }
        r.params.alg = (bus_sig_alg_t)h.alg;
        strcpy(r.params.hash, chan_hashes[h.hash]);
        strcpy(r.params.mgf1_hash, chan_hashes[h.mgf1]);
        r.params.salt_len = h.alg == BUS_SIG_RSA_PSS ? h.salt_len : -1;
    } else if (h.op == BUS_CHAN_OP_DECRYPT) {
        r.status = parse_decrypt(&h, buf + sizeof(h), &r);
    }
    *ret = r;
    return (long)(sizeof(h) + h.len);
}

long bus_chan_parse_reply(const uint8_t *buf, size_t avail, bus_chan_rep_hdr_t *ret_hdr,
                          const uint8_t **ret_data)
{
    bus_chan_rep_hdr_t h;

    if (avail < sizeof(h))
        return 0;
    memcpy(&h, buf, sizeof(h));
    if (h.magic != BUS_CHAN_MAGIC || h.reserved != 0 || h.len > BUS_CHAN_MAX_PAYLOAD ||
        (h.op != BUS_CHAN_OP_BIND && h.op != BUS_CHAN_OP_SIGN && h.op != BUS_CHAN_OP_DECRYPT) ||
        h.status > 0 ||
        h.status < BUS_ERR_PROTOCOL)
        return BUS_ERR_PROTOCOL;
    if (avail - sizeof(h) < h.len)
        return 0;
    *ret_hdr = h;
    *ret_data = buf + sizeof(h);
    return (long)(sizeof(h) + h.len);
}

long bus_chan_encode_sign(uint8_t *out, uint32_t id, uint32_t handle, const bus_sign_params_t *p,
                          const uint8_t *data, size_t len)
{
    int hash = bus_chan_hash_index(p->hash), mgf1 = bus_chan_hash_index(p->mgf1_hash);
    bus_chan_req_hdr_t h = {.magic = BUS_CHAN_MAGIC, .op = BUS_CHAN_OP_SIGN, .id = id,
                            .handle = handle, .salt_len = p->salt_len, .len = (uint32_t)len};

    if (hash < 0 || mgf1 < 0 || len > BUS_CHAN_MAX_PAYLOAD || p->alg < BUS_SIG_RSA_PKCS1 ||
        p->alg > BUS_SIG_EDDSA)
        return BUS_ERR_INVALID_ARGS;
    h.alg = (uint8_t)p->alg;
    h.hash = (uint8_t)hash;
    h.mgf1 = (uint8_t)mgf1;
    memcpy(out, &h, sizeof(h));
    if (len)
        memcpy(out + sizeof(h), data, len);
    return (long)(sizeof(h) + len);
}

long bus_chan_encode_bind(uint8_t *out, uint32_t id, const char *uri)
{
    size_t len = strlen(uri);
    bus_chan_req_hdr_t h = {.magic = BUS_CHAN_MAGIC, .op = BUS_CHAN_OP_BIND, .id = id,
                            .salt_len = -1, .len = (uint32_t)len};

    if (len == 0 || len > BUS_CHAN_MAX_URI)
        return BUS_ERR_INVALID_ARGS;
    memcpy(out, &h, sizeof(h));
    memcpy(out + sizeof(h), uri, len);
    return (long)(sizeof(h) + len);
}

bool bus_chan_can_decrypt(const bus_decrypt_params_t *p, size_t len)
{
    bool oaep = p->alg == BUS_DEC_RSA_OAEP;

    return len <= BUS_CHAN_MAX_PAYLOAD &&
           (!oaep || (memchr(p->hash, 0, sizeof(p->hash)) &&
                      memchr(p->mgf1_hash, 0, sizeof(p->mgf1_hash)) &&
                      bus_chan_hash_index(p->hash) >= 0 &&
                      bus_chan_hash_index(p->mgf1_hash) >= 0 &&
                      p->label_len <= BUS_CHAN_MAX_PAYLOAD - len));
}

/* As bus_new_decrypt_call: hash, mgf1 and label go only with OAEP. */
long bus_chan_encode_decrypt(uint8_t *out, uint32_t id, uint32_t handle,
                             const bus_decrypt_params_t *p, const uint8_t *data, size_t len)
{
    bool oaep = p->alg == BUS_DEC_RSA_OAEP;
    size_t label_len = oaep ? p->label_len : 0;
    bus_chan_req_hdr_t h = {.magic = BUS_CHAN_MAGIC, .op = BUS_CHAN_OP_DECRYPT, .id = id,
                            .handle = handle};

    if (!bus_chan_can_decrypt(p, len) || p->alg < BUS_DEC_RSA_PKCS1 || p->alg > BUS_DEC_RSA_RAW ||
        len == 0 || len > BUS_DECRYPT_MAX_DATA || label_len > BUS_DECRYPT_MAX_LABEL ||
        (!p->label && label_len))
        return BUS_ERR_INVALID_ARGS;
    h.alg = (uint8_t)p->alg;
    h.hash = oaep ? (uint8_t)bus_chan_hash_index(p->hash) : 0;
    h.mgf1 = oaep ? (uint8_t)bus_chan_hash_index(p->mgf1_hash) : 0;
    h.label_len = (uint32_t)label_len;
    h.len = (uint32_t)(label_len + len);
    memcpy(out, &h, sizeof(h));
    if (label_len)
        memcpy(out + sizeof(h), p->label, label_len);
    memcpy(out + sizeof(h) + label_len, data, len);
    return (long)(sizeof(h) + h.len);
}

size_t bus_chan_encode_reply(uint8_t *out, uint8_t op, uint32_t id, int32_t status,
                             uint32_t handle, const void *data, size_t len)
{
    bus_chan_rep_hdr_t h = {.magic = BUS_CHAN_MAGIC, .op = op, .id = id, .status = status,
                            .handle = handle};

    if (len > BUS_CHAN_MAX_PAYLOAD) {
        len = BUS_CHAN_MAX_PAYLOAD;
        /* an error text is cut at a character boundary */
        while (status != 0 && len > 0 && (((const uint8_t *)data)[len] & 0xc0) == 0x80)
            len--;
    }
    h.len = (uint32_t)len;
    memcpy(out, &h, sizeof(h));
    if (len)
        memcpy(out + sizeof(h), data, len);
    return sizeof(h) + len;
}
