/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * A desktop PIN prompter for tests: registers with p11agentd on the session
 * bus (RegisterPrompter) and answers org.p11agent.Prompter1.GetPin with the
 * PIN given, logging what it was asked (never the PIN) to LOG. Prints
 * "registered" once the agent accepted it; runs until killed or 60 s.
 *
 * usage: prompter PIN|cancel LOG
 */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <dbus/dbus.h>

static const char *pin;
static FILE *logf;

static void log_info(DBusMessage *msg)
{
    DBusMessageIter it, dict;

    dbus_message_iter_init(msg, &it);
    dbus_message_iter_recurse(&it, &dict);
    fprintf(logf, "GetPin");
    while (dbus_message_iter_get_arg_type(&dict) == DBUS_TYPE_DICT_ENTRY) {
        DBusMessageIter e, v;
        const char *key, *s;
        dbus_uint32_t u;
        dbus_bool_t b;

        dbus_message_iter_recurse(&dict, &e);
        dbus_message_iter_get_basic(&e, &key);
        dbus_message_iter_next(&e);
        dbus_message_iter_recurse(&e, &v);
        switch (dbus_message_iter_get_arg_type(&v)) {
        case DBUS_TYPE_STRING:
            dbus_message_iter_get_basic(&v, &s);
            fprintf(logf, " %s=[%s]", key, s);
            break;
        case DBUS_TYPE_UINT32:
            dbus_message_iter_get_basic(&v, &u);
            fprintf(logf, " %s=%u", key, u);
            break;
        case DBUS_TYPE_BOOLEAN:
            dbus_message_iter_get_basic(&v, &b);
            fprintf(logf, " %s=%s", key, b ? "true" : "false");
            break;
        }
        dbus_message_iter_next(&dict);
    }
    fprintf(logf, "\n");
    fflush(logf);
}

static DBusHandlerResult on_message(DBusConnection *conn, DBusMessage *msg, void *data)
{
    DBusMessage *reply;

    if (!dbus_message_is_method_call(msg, "org.p11agent.Prompter1", "GetPin"))
        return DBUS_HANDLER_RESULT_NOT_YET_HANDLED;
    log_info(msg);
    if (strcmp(pin, "cancel") == 0)
        reply = dbus_message_new_error(msg, "org.p11agent.Prompter1.Error.Cancelled",
                                       "the user cancelled");
    else {
        reply = dbus_message_new_method_return(msg);
        dbus_message_append_args(reply, DBUS_TYPE_STRING, &pin, DBUS_TYPE_INVALID);
    }
    dbus_connection_send(conn, reply, NULL);
    dbus_message_unref(reply);
    return DBUS_HANDLER_RESULT_HANDLED;
}

int main(int argc, char **argv)
{
    static const DBusObjectPathVTable vt = {.message_function = on_message};
    const char *path = "/org/p11agent/test/Prompter";
    DBusMessage *call, *reply;
    DBusConnection *bus;
    DBusError err;
    time_t end = time(NULL) + 60;

    if (argc != 3 || !(logf = fopen(argv[2], "a"))) {
        fprintf(stderr, "usage: prompter PIN|cancel LOG\n");
        return 2;
    }
    pin = argv[1];
    dbus_error_init(&err);
    bus = dbus_bus_get(DBUS_BUS_SESSION, &err);
    if (!bus) {
        fprintf(stderr, "prompter: %s\n", err.message);
        return 1;
    }
    dbus_connection_register_object_path(bus, path, &vt, NULL);
    call = dbus_message_new_method_call("org.p11agent.Agent1", "/org/p11agent/Agent1",
                                        "org.p11agent.Agent1", "RegisterPrompter");
    dbus_message_append_args(call, DBUS_TYPE_OBJECT_PATH, &path, DBUS_TYPE_INVALID);
    reply = dbus_connection_send_with_reply_and_block(bus, call, 10000, &err);
    dbus_message_unref(call);
    if (!reply) {
        fprintf(stderr, "prompter: RegisterPrompter: %s\n", err.message);
        return 1;
    }
    dbus_message_unref(reply);
    printf("registered\n");
    fflush(stdout);
    while (time(NULL) < end && dbus_connection_read_write_dispatch(bus, 1000))
        ;
    return 0;
}
