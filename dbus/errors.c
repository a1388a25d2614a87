/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Error names, type names and algorithm names of the protocol: one table each. */
#include <stdlib.h>
#include <string.h>

#include "bus.h"

static const struct {
    bus_err_t err;
    const char *name; /* suffix after BUS_ERROR_PREFIX */
    const char *str;
} err_table[] = {
    {BUS_ERR_FAILED, BUS_ERROR_PREFIX "Failed", "failed"},
    {BUS_ERR_NO_SUCH_KEY, BUS_ERROR_PREFIX "NoSuchKey", "no such key"},
    {BUS_ERR_LOCKED, BUS_ERROR_PREFIX "Locked", "token locked (no PIN available)"},
    {BUS_ERR_PIN_INCORRECT, BUS_ERROR_PREFIX "PinIncorrect", "PIN incorrect"},
    {BUS_ERR_PIN_LOCKED, BUS_ERROR_PREFIX "PinLocked", "PIN locked"},
    {BUS_ERR_TOKEN_REMOVED, BUS_ERROR_PREFIX "TokenRemoved", "token removed"},
    {BUS_ERR_DENIED, BUS_ERROR_PREFIX "Denied", "access denied"},
    {BUS_ERR_UNSUPPORTED, BUS_ERROR_PREFIX "Unsupported", "algorithm not supported"},
    {BUS_ERR_BUSY, BUS_ERROR_PREFIX "Busy", "agent busy"},
    {BUS_ERR_INVALID_ARGS, BUS_ERROR_PREFIX "InvalidArgs", "invalid arguments"},
    {BUS_ERR_DEVICE, BUS_ERROR_PREFIX "Device", "token device error"},
    {BUS_ERR_NO_MEMORY, BUS_ERROR_PREFIX "NoMemory", "out of memory"},
    {BUS_ERR_TIMEOUT, BUS_ERROR_PREFIX "Timeout", "timed out"},
    {BUS_ERR_NOT_RUNNING, BUS_ERROR_PREFIX "NotRunning", "agent not running"},
    {BUS_ERR_DISCONNECTED, BUS_ERROR_PREFIX "Disconnected", "agent disconnected"},
    {BUS_ERR_PROTOCOL, BUS_ERROR_PREFIX "Protocol", "protocol error"},
};

#define N_ELEMENTS(a) (sizeof(a) / sizeof((a)[0]))

const char *bus_err_name(bus_err_t err)
{
    for (size_t i = 0; i < N_ELEMENTS(err_table); i++)
        if (err_table[i].err == err)
            return err_table[i].name;
    return BUS_ERROR_PREFIX "Failed";
}

const char *bus_err_str(bus_err_t err)
{
    if (err == BUS_OK)
        return "success";
    for (size_t i = 0; i < N_ELEMENTS(err_table); i++)
        if (err_table[i].err == err)
            return err_table[i].str;
    return "failed";
}

bus_err_t bus_err_from_name(const char *name)
{
    if (name == NULL)
        return BUS_ERR_FAILED;
    for (size_t i = 0; i < N_ELEMENTS(err_table); i++)
        if (strcmp(err_table[i].name, name) == 0)
            return err_table[i].err;
    if (strcmp(name, DBUS_ERROR_NO_REPLY) == 0 || strcmp(name, DBUS_ERROR_TIMEOUT) == 0 ||
        strcmp(name, DBUS_ERROR_TIMED_OUT) == 0)
        return BUS_ERR_TIMEOUT;
    if (strcmp(name, DBUS_ERROR_DISCONNECTED) == 0)
        return BUS_ERR_DISCONNECTED;
    if (strcmp(name, DBUS_ERROR_NO_SERVER) == 0 || strcmp(name, DBUS_ERROR_FILE_NOT_FOUND) == 0 ||
        strcmp(name, DBUS_ERROR_NO_NETWORK) == 0 || strcmp(name, DBUS_ERROR_IO_ERROR) == 0)
        return BUS_ERR_NOT_RUNNING;
    if (strcmp(name, DBUS_ERROR_NO_MEMORY) == 0)
        return BUS_ERR_NO_MEMORY;
    if (strcmp(name, DBUS_ERROR_ACCESS_DENIED) == 0 || strcmp(name, DBUS_ERROR_AUTH_FAILED) == 0)
        return BUS_ERR_DENIED;
    if (strcmp(name, DBUS_ERROR_INVALID_ARGS) == 0)
        return BUS_ERR_INVALID_ARGS;
    return BUS_ERR_FAILED;
}

static const struct {
    bus_key_type_t type;
    const char *name;
} key_type_table[] = {
    {BUS_KEY_RSA, "RSA"},
    {BUS_KEY_EC, "EC"},
    {BUS_KEY_ED25519, "ED25519"},
    {BUS_KEY_ED448, "ED448"},
};

const char *bus_key_type_name(bus_key_type_t t)
{
    for (size_t i = 0; i < N_ELEMENTS(key_type_table); i++)
        if (key_type_table[i].type == t)
            return key_type_table[i].name;
    return "UNKNOWN";
}

bus_key_type_t bus_key_type_from_name(const char *name)
{
    if (name == NULL)
        return BUS_KEY_UNKNOWN;
    for (size_t i = 0; i < N_ELEMENTS(key_type_table); i++)
        if (strcmp(key_type_table[i].name, name) == 0)
            return key_type_table[i].type;
    return BUS_KEY_UNKNOWN;
}

static const struct {
    bus_sig_alg_t alg;
    const char *name;
} alg_table[] = {
    {BUS_SIG_RSA_PKCS1, "rsa-pkcs1"},
    {BUS_SIG_RSA_PSS, "rsa-pss"},
    {BUS_SIG_ECDSA, "ecdsa"},
    {BUS_SIG_EDDSA, "eddsa"},
};

const char *bus_sig_alg_name(bus_sig_alg_t a)
{
    for (size_t i = 0; i < N_ELEMENTS(alg_table); i++)
        if (alg_table[i].alg == a)
            return alg_table[i].name;
    return NULL;
}

bus_sig_alg_t bus_sig_alg_from_name(const char *name)
{
    if (name == NULL)
        return 0;
    for (size_t i = 0; i < N_ELEMENTS(alg_table); i++)
        if (strcmp(alg_table[i].name, name) == 0)
            return alg_table[i].alg;
    return 0;
}

static const struct {
    bus_dec_alg_t alg;
    const char *name;
} dec_table[] = {
    {BUS_DEC_RSA_PKCS1, "rsa-pkcs1"},
    {BUS_DEC_RSA_OAEP, "rsa-oaep"},
    {BUS_DEC_RSA_RAW, "rsa-raw"},
};

const char *bus_dec_alg_name(bus_dec_alg_t a)
{
    for (size_t i = 0; i < N_ELEMENTS(dec_table); i++)
        if (dec_table[i].alg == a)
            return dec_table[i].name;
    return NULL;
}

bus_dec_alg_t bus_dec_alg_from_name(const char *name)
{
    if (name == NULL)
        return 0;
    for (size_t i = 0; i < N_ELEMENTS(dec_table); i++)
        if (strcmp(dec_table[i].name, name) == 0)
            return dec_table[i].alg;
    return 0;
}
