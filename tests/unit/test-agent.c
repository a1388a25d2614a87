/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Unit tests of agent/: PIN sources, error mapping, the main loop, pinentry answers. */
#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "agent.h"
#include "text.h"
#include "pinmax.h"

static char tmpdir[] = "/tmp/p11agent-test-agent-XXXXXX";

static int setup(void **state)
{
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown(void **state)
{
    char cmd[128];

    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

static char *write_file(const char *name, const char *content, size_t len, mode_t mode)
{
    char *path = NULL;
    int fd;

    assert_true(asprintf(&path, "%s/%s", tmpdir, name) > 0);
    fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, mode);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, content, len), (ssize_t)len);
    close(fd);
    return path;
}

static void test_agent_pin_source_parse(void **state)
{
    agent_pin_source_t src = {0};
    char *err = NULL;

    assert_int_equal(agent_pin_source_parse("file:/etc/pin", &src, &err), 0);
    assert_int_equal(src.kind, AGENT_PIN_FILE);
    assert_string_equal(src.path, "/etc/pin");
    agent_pin_source_clear(&src);
    assert_null(src.path);

    assert_int_equal(agent_pin_source_parse("env:PIN", &src, &err), -EINVAL);
    assert_non_null(err);
    assert_non_null(strstr(err, "env:PIN"));
    free(err);
    err = NULL;
    assert_int_equal(agent_pin_source_parse("file:", &src, &err), -EINVAL);
    free(err);
}

static void read_pin_expect(const char *content, size_t len, const char *expect)
{
    char *path = write_file("pin", content, len, 0600);
    agent_pin_source_t src = {.kind = AGENT_PIN_FILE, .path = path};
    agent_secret_t s = {0};
    agent_pin_id_t id = {0};
    char *err = NULL;

    assert_int_equal(agent_pin_source_read(&src, &s, &id, &err), 0);
    assert_null(err);
    assert_int_equal(s.len, strlen(expect));
    assert_memory_equal(s.buf, expect, s.len);
    assert_int_equal(s.buf[s.len], '\0');
    assert_true(id.ino != 0);
    agent_secret_free(&s);
    assert_null(s.buf);
    assert_int_equal(s.len, 0);
    free(path);
}

static void read_pin_expect_len(const char *content, size_t len)
{
    char *expect = strndup(content, len);

    assert_non_null(expect);
    read_pin_expect(content, len, expect);
    free(expect);
}

static void test_agent_pin_file_reads_first_line(void **state)
{
    read_pin_expect("123456", 6, "123456");
    read_pin_expect("123456\n", 7, "123456");
    read_pin_expect("12 34\r\nsecond line\n", 19, "12 34");
}

static void expect_pin_error(const char *content, size_t len, int expect_r, const char *needle)
{
    char *path = write_file("badpin", content, len, 0600);
    agent_pin_source_t src = {.kind = AGENT_PIN_FILE, .path = path};
    agent_secret_t s = {0};
    char *err = NULL;

    assert_int_equal(agent_pin_source_read(&src, &s, NULL, &err), expect_r);
    assert_null(s.buf);
    assert_non_null(err);
    assert_non_null(strstr(err, needle));
    assert_non_null(strstr(err, path)); /* names the file */
    free(err);
    free(path);
}

static void test_agent_pin_file_errors(void **state)
{
    char big[600];
    agent_pin_source_t src = {.kind = AGENT_PIN_FILE, .path = "/nonexistent/pin"};
    agent_secret_t s = {0};
    char *err = NULL;

    expect_pin_error("", 0, -ENODATA, "empty");
    expect_pin_error("\n", 1, -ENODATA, "empty");
    memset(big, '7', sizeof(big));
    expect_pin_error(big, sizeof(big), -E2BIG, "more than a PIN");

    assert_int_equal(agent_pin_source_read(&src, &s, NULL, &err), -ENOENT);
    assert_non_null(strstr(err, "/nonexistent/pin"));
    free(err);
}

static bool pin_id_equal(const agent_pin_id_t *x, const agent_pin_id_t *y)
{
    return x->dev == y->dev && x->ino == y->ino && x->size == y->size &&
           x->mtime_ns == y->mtime_ns;
}

/* The id tells a PIN file the token rejected from the one the user wrote
 * after it: a new PIN is often as long as the old one, so the size alone
 * must not decide. Same size and content rewritten in place (only the
 * mtime differs), then the file replaced by another with the same size and
 * mtime (only the inode differs): each time the id changes; unchanged, it
 * stays. */
static void test_agent_pin_id_changes_with_file(void **state)
{
    char *path = write_file("pin2", "1111", 4, 0600);
    char *tmp;
    agent_pin_source_t src = {.kind = AGENT_PIN_FILE, .path = path};
    agent_secret_t s = {0};
    agent_pin_id_t a = {0}, a2 = {0}, b = {0}, c = {0};
    struct timespec times[2] = {{0, UTIME_OMIT}, {0, 0}};
    struct stat st;

    assert_int_equal(agent_pin_source_read(&src, &s, &a, NULL), 0);
    agent_secret_free(&s);
    assert_int_equal(agent_pin_source_read(&src, &s, &a2, NULL), 0);
    agent_secret_free(&s);
    assert_true(pin_id_equal(&a, &a2));

    /* in place, same size, a later mtime (as an editor saving it) */
    assert_int_equal(stat(path, &st), 0);
    free(write_file("pin2", "2222", 4, 0600));
    times[1].tv_sec = st.st_mtim.tv_sec + 1;
    times[1].tv_nsec = st.st_mtim.tv_nsec;
    assert_int_equal(utimensat(AT_FDCWD, path, times, 0), 0);
    assert_int_equal(agent_pin_source_read(&src, &s, &b, NULL), 0);
    assert_memory_equal(s.buf, "2222", 4);
    agent_secret_free(&s);
    assert_int_equal(a.size, b.size);
    assert_false(pin_id_equal(&a, &b));

    /* replaced (rename over it), same size and mtime: another inode */
    assert_int_equal(stat(path, &st), 0);
    tmp = write_file("pin2.new", "3333", 4, 0600);
    times[1] = st.st_mtim;
    assert_int_equal(utimensat(AT_FDCWD, tmp, times, 0), 0);
    assert_int_equal(rename(tmp, path), 0);
    assert_int_equal(agent_pin_source_read(&src, &s, &c, NULL), 0);
    assert_memory_equal(s.buf, "3333", 4);
    agent_secret_free(&s);
    assert_int_equal(b.size, c.size);
    assert_int_equal(b.mtime_ns, c.mtime_ns);
    assert_false(pin_id_equal(&b, &c));
    free(tmp);
    free(path);
}

/* A rejected PIN file is remembered next to the socket, per token, across
 * agents; a record that is not ours or not one record is ignored. */
static void test_agent_pin_rejected_remembered(void **state)
{
    static agent_t a;
    agent_pin_id_t id = {.dev = 7, .ino = 123456, .size = 8, .mtime_ns = 1700000000123456789};
    agent_pin_id_t got = {0};
    const char *tok = "pkcs11:model=SW%20%20%20TPM;manufacturer=IBM;serial=0;token=tpm";
    char *sock = NULL, *cmd = NULL, *rec = NULL;
    glob_t g;

    assert_true(asprintf(&sock, "%s/agent.sock", tmpdir) > 0);
    a.socket_path = sock;
    assert_false(agent_pin_rejected_load(&a, tok, &got));
    agent_pin_rejected_save(&a, tok, &id);
    assert_true(agent_pin_rejected_load(&a, tok, &got));
    assert_true(pin_id_equal(&got, &id));
    /* another token has no record */
    assert_false(agent_pin_rejected_load(&a, "pkcs11:token=other", &got));

    assert_true(asprintf(&cmd, "%s/pin-rejected-*", tmpdir) > 0);
    assert_int_equal(glob(cmd, 0, NULL, &g), 0);
    assert_int_equal(g.gl_pathc, 1);
    rec = strdup(g.gl_pathv[0]);
    globfree(&g);
    /* others may write it: ignored */
    assert_int_equal(chmod(rec, 0622), 0);
    assert_false(agent_pin_rejected_load(&a, tok, &got));
    assert_int_equal(chmod(rec, 0600), 0);
    assert_true(agent_pin_rejected_load(&a, tok, &got));
    /* not one record: ignored */
    assert_int_equal(truncate(rec, 10), 0);
    assert_false(agent_pin_rejected_load(&a, tok, &got));
    /* a symlink: ignored */
    assert_int_equal(unlink(rec), 0);
    agent_pin_rejected_save(&a, tok, &id);
    assert_int_equal(rename(rec, sock), 0);
    assert_int_equal(symlink(sock, rec), 0);
    assert_false(agent_pin_rejected_load(&a, tok, &got));
    assert_int_equal(unlink(rec), 0);
    assert_int_equal(unlink(sock), 0);

    agent_pin_rejected_save(&a, tok, &id);
    assert_true(agent_pin_rejected_load(&a, tok, &got));
    agent_pin_rejected_forget(&a, tok);
    assert_false(agent_pin_rejected_load(&a, tok, &got));
    assert_int_equal(access(rec, F_OK), -1);
    /* no socket path: nothing remembered, nothing fails */
    a.socket_path = NULL;
    agent_pin_rejected_save(&a, tok, &id);
    assert_false(agent_pin_rejected_load(&a, tok, &got));
    agent_pin_rejected_forget(&a, tok);
    free(rec);
    free(cmd);
    free(sock);
}

static void test_agent_err_from_tok_table(void **state)
{
    assert_int_equal(agent_err_from_tok(TOK_OK), BUS_OK);
    assert_int_equal(agent_err_from_tok(TOK_ERR_NO_KEY), BUS_ERR_NO_SUCH_KEY);
    assert_int_equal(agent_err_from_tok(TOK_ERR_NOT_LOGGED_IN), BUS_ERR_LOCKED);
    assert_int_equal(agent_err_from_tok(TOK_ERR_PIN_INCORRECT), BUS_ERR_PIN_INCORRECT);
    assert_int_equal(agent_err_from_tok(TOK_ERR_PIN_LOCKED), BUS_ERR_PIN_LOCKED);
    assert_int_equal(agent_err_from_tok(TOK_ERR_TOKEN_REMOVED), BUS_ERR_TOKEN_REMOVED);
    assert_int_equal(agent_err_from_tok(TOK_ERR_MECHANISM), BUS_ERR_UNSUPPORTED);
    assert_int_equal(agent_err_from_tok(TOK_ERR_DEVICE), BUS_ERR_DEVICE);
    assert_int_equal(agent_err_from_tok(TOK_ERR_BUSY), BUS_ERR_BUSY);
    assert_int_equal(agent_err_from_tok(TOK_ERR_GENERAL), BUS_ERR_FAILED);
    assert_int_equal(agent_err_from_tok(-999), BUS_ERR_FAILED);
}

typedef struct {
    agent_loop_t *loop;
    int reads;
} fd_test_t;

static void on_readable(void *userdata, int fd, short revents)
{
    fd_test_t *t = userdata;
    char c;

    assert_true(revents & POLLIN);
    assert_int_equal(read(fd, &c, 1), 1);
    assert_int_equal(c, 'x');
    if (++t->reads == 3)
        agent_loop_quit(t->loop);
}

static void test_agent_loop_runs_fd_callbacks_until_quit(void **state)
{
    fd_test_t t = {0};
    int p[2];

    assert_int_equal(pipe(p), 0);
    assert_int_equal(agent_loop_new(&t.loop), 0);
    assert_int_equal(agent_loop_add_fd(t.loop, p[0], POLLIN, on_readable, &t), 0);
    assert_int_equal(write(p[1], "xxx", 3), 3);
    assert_int_equal(agent_loop_run(t.loop), 0);
    assert_int_equal(t.reads, 3);
    agent_loop_free(t.loop);
    close(p[0]);
    close(p[1]);
}

static void test_agent_conf_parses_every_section(void **state)
{
    const char *text = "# comment\n"
                       "[agent]\n"
                       "module = /usr/lib/a.so /usr/lib/b.so\n"
                       "pin-source = file:/etc/pin   # trailing comment\n"
                       "max-clients = 12\n"
                       "allow-users = root 4321\n"
                       "allow-groups = 0, 777\n"
                       "audit = refusals\n"
                       "\n"
                       "[token pkcs11:token=hsm1]\n"
                       "pin-source = credential:hsm1\n"
                       "[key pkcs11:object=web;type=private]\n"
                       "allow-users = 1000\n"
                       "allow-exe = /usr/sbin/nginx /usr/bin/openssl\n"
                       "[key pkcs11:object=open]\n";
    agent_conf_t c = {0};
    char *err = NULL;

    assert_int_equal(agent_conf_parse(text, "t.conf", &c, &err), 0);
    assert_null(err);
    assert_int_equal(c.n_modules, 2);
    assert_string_equal(c.modules[1], "/usr/lib/b.so");
    assert_string_equal(c.pin_source, "file:/etc/pin");
    assert_int_equal(c.max_clients, 12);
    assert_int_equal(c.audit, AGENT_AUDIT_REFUSALS);
    assert_int_equal(c.allow.n_uids, 2);
    assert_int_equal(c.allow.uids[0], 0);
    assert_int_equal(c.allow.uids[1], 4321);
    assert_int_equal(c.allow.n_gids, 2);
    assert_int_equal(c.allow.gids[1], 777);
    assert_int_equal(c.n_tokens, 1);
    assert_string_equal(c.tokens[0].uri, "pkcs11:token=hsm1");
    assert_string_equal(c.tokens[0].pin_source, "credential:hsm1");
    assert_int_equal(c.n_keys, 2);
    assert_string_equal(c.keys[0].uri, "pkcs11:object=web;type=private");
    assert_true(c.keys[0].has_ids);
    assert_int_equal(c.keys[0].n_exes, 2);
    assert_string_equal(c.keys[0].exes[0], "/usr/sbin/nginx");
    assert_false(c.keys[1].has_ids);
    assert_int_equal(c.keys[1].n_exes, 0);

    /* the id lists */
    gid_t groups[] = {5, 777};
    assert_true(agent_id_list_allows(&c.allow, 4321, 100, NULL, 0));
    assert_true(agent_id_list_allows(&c.allow, 55, 100, groups, 2));
    assert_false(agent_id_list_allows(&c.allow, 55, 100, groups, 1));
    assert_false(agent_id_list_allows(&c.keys[1].allow, 1000, 1000, NULL, 0));
    agent_conf_clear(&c);
    assert_null(c.modules);
}

static void expect_conf_error(const char *text, const char *needle)
{
    agent_conf_t c = {0};
    char *err = NULL;

    assert_true(agent_conf_parse(text, "bad.conf", &c, &err) < 0);
    assert_non_null(err);
    if (!strstr(err, needle))
        fail_msg("error '%s' does not contain '%s'", err, needle);
    assert_null(c.modules);
    free(err);
}

static void test_agent_conf_errors_name_file_and_line(void **state)
{
    expect_conf_error("[agent]\nmax-clients = many\n", "bad.conf:2: max-clients");
    expect_conf_error("[agent]\nmax-clients = 0\n", "bad.conf:2:");
    expect_conf_error("module = /x.so\n", "bad.conf:1: 'module' is outside a section");
    expect_conf_error("[agent]\n\n\nfrobnicate = 1\n", "bad.conf:4: unknown setting 'frobnicate' in [agent]");
    expect_conf_error("[agent]\nallow-users = no-such-user-p11agent\n", "allow-users: no such user 'no-such-user-p11agent'");
    expect_conf_error("[agent]\nallow-groups = no-such-group-p11agent\n", "no such group");
    expect_conf_error("[key pkcs11:object=x]\nallow-exe = openssl\n", "allow-exe: 'openssl' is not an absolute path");
    expect_conf_error("[key object=x]\n", "'object=x' is not a pkcs11: URI");
    expect_conf_error("[agent\n", "section header");
    expect_conf_error("[agent]\nthis line has no equals\n", "bad.conf:2: expected 'name = value'");
    expect_conf_error("[agent]\naudit = sometimes\n", "audit = 'sometimes': expected all, refusals or none");
    expect_conf_error("[token pkcs11:token=a]\nallow-exe = /bin/sh\n",
                      "'allow-exe' is not a setting of [token pkcs11:...]: it belongs in [key");
}

static void test_agent_conf_missing_file(void **state)
{
    agent_conf_t c = {0};
    char *err = NULL;

    assert_int_equal(agent_conf_load("/nonexistent/agent.conf", false, &c, &err), 0);
    assert_int_equal(c.n_keys, 0);
    assert_int_equal(agent_conf_load("/nonexistent/agent.conf", true, &c, &err), -ENOENT);
    assert_non_null(strstr(err, "/nonexistent/agent.conf"));
    free(err);
}

/* A clients list for the limit choices: n connections, each with a uid,
 * a slot and a state; since/last-active times given by the index. */
typedef struct fake_conn {
    uid_t uid;
    agent_slot_t slot;
    agent_conn_state_t state;
    int64_t ms;
} fake_conn_t;

static void fake_clients(agent_t *a, agent_client_t *cs, const fake_conn_t *f, size_t n)
{
    a->clients = NULL;
    a->n_clients = a->n_pending = 0;
    for (size_t i = n; i-- > 0;) {
        memset(&cs[i], 0, sizeof(cs[i]));
        cs[i].uid = f[i].uid;
        cs[i].slot = f[i].slot;
        cs[i].since_ms = f[i].ms;
        atomic_init(&cs[i].state, f[i].state);
        atomic_init(&cs[i].last_active_ms, f[i].ms);
        cs[i].next = a->clients;
        a->clients = &cs[i];
        if (f[i].slot == AGENT_SLOT_PENDING)
            a->n_pending++;
        else if (f[i].slot == AGENT_SLOT_CLIENT)
            a->n_clients++;
    }
}

static void test_agent_limits_pending_victim(void **state)
{
    agent_client_t cs[AGENT_MAX_PENDING + 2];
    fake_conn_t f[AGENT_MAX_PENDING + 2];
    agent_t a = {0};

    /* uid 7 holds most of the pending connections; uid 8's is the oldest
     * of all, and a client (not pending) is older still */
    for (size_t i = 0; i < AGENT_MAX_PENDING; i++)
        f[i] = (fake_conn_t){7, AGENT_SLOT_PENDING, AGENT_CONN_PENDING, 100 + (int64_t)i};
    f[5].uid = 8;
    f[5].ms = 10;
    f[3].ms = 50; /* uid 7's oldest */
    f[AGENT_MAX_PENDING] = (fake_conn_t){7, AGENT_SLOT_CLIENT, AGENT_CONN_IDLE, 1};
    f[AGENT_MAX_PENDING + 1] = (fake_conn_t){7, AGENT_SLOT_NONE, AGENT_CONN_CLOSING, 2};
    fake_clients(&a, cs, f, AGENT_MAX_PENDING + 2);
    assert_int_equal(a.n_pending, AGENT_MAX_PENDING);
    assert_ptr_equal(agent_pending_victim_locked(&a), &cs[3]);

    /* one fewer pending: no victim */
    fake_clients(&a, cs, f + 1, AGENT_MAX_PENDING + 1);
    assert_null(agent_pending_victim_locked(&a));
}

static void test_agent_limits_room_per_user(void **state)
{
    agent_client_t cs[8], newcomer = {.uid = 7};
    agent_client_t *victim = (agent_client_t *)1;
    const char *limit = NULL;
    agent_t a = {.max_clients = 8, .max_clients_per_user = 3};
    const fake_conn_t f[] = {
        {7, AGENT_SLOT_CLIENT, AGENT_CONN_BUSY, 1},  /* busy: never closed */
        {7, AGENT_SLOT_CLIENT, AGENT_CONN_IDLE, 30},
        {7, AGENT_SLOT_CLIENT, AGENT_CONN_IDLE, 20}, /* uid 7's longest idle */
        {9, AGENT_SLOT_CLIENT, AGENT_CONN_IDLE, 5},  /* idle longer, other uid */
        {7, AGENT_SLOT_PENDING, AGENT_CONN_PENDING, 2},
    };

    fake_clients(&a, cs, f, 5);
    assert_int_equal(agent_max_clients_per_user(&a), 3);
    assert_int_equal(agent_client_room_locked(&a, &newcomer, &victim, &limit), 0);
    assert_ptr_equal(victim, &cs[2]);
    assert_string_equal(limit, "max-clients-per-user");

    /* another uid has room: nothing closed */
    newcomer.uid = 9;
    assert_int_equal(agent_client_room_locked(&a, &newcomer, &victim, &limit), 0);
    assert_null(victim);

    /* every connection of uid 7 busy: refused, naming the setting */
    newcomer.uid = 7;
    atomic_store(&cs[1].state, AGENT_CONN_BUSY);
    atomic_store(&cs[2].state, AGENT_CONN_BUSY);
    assert_int_equal(agent_client_room_locked(&a, &newcomer, &victim, &limit), -EBUSY);
    assert_null(victim);
    assert_string_equal(limit, "max-clients-per-user");

    /* the default: 128, at most max-clients (then named max-clients) */
    a.max_clients_per_user = 0;
    assert_int_equal(agent_max_clients_per_user(&a), 8);
    a.max_clients = 1000;
    assert_int_equal(agent_max_clients_per_user(&a), AGENT_MAX_CLIENTS_PER_USER_DEFAULT);
    a.max_clients = 3;
    atomic_store(&cs[1].state, AGENT_CONN_IDLE);
    assert_int_equal(agent_client_room_locked(&a, &newcomer, &victim, &limit), 0);
    assert_ptr_equal(victim, &cs[1]);
    assert_string_equal(limit, "max-clients");
}

static void test_agent_limits_room_max_clients(void **state)
{
    agent_client_t cs[8], newcomer = {.uid = 11};
    agent_client_t *victim = NULL;
    const char *limit = NULL;
    agent_t a = {.max_clients = 4, .max_clients_per_user = 4};
    const fake_conn_t f[] = {
        {7, AGENT_SLOT_CLIENT, AGENT_CONN_IDLE, 40},
        {9, AGENT_SLOT_CLIENT, AGENT_CONN_BUSY, 1},
        {9, AGENT_SLOT_CLIENT, AGENT_CONN_IDLE, 30}, /* the longest idle */
        {7, AGENT_SLOT_CLIENT, AGENT_CONN_CLOSING, 2},
        {7, AGENT_SLOT_PENDING, AGENT_CONN_PENDING, 3},
        {7, AGENT_SLOT_PENDING, AGENT_CONN_PENDING, 4},
    };

    /* three clients (pending ones take no slot): room */
    fake_clients(&a, cs, f, 6);
    cs[3].slot = AGENT_SLOT_NONE; /* closing: out of the count */
    a.n_clients--;
    assert_int_equal(agent_client_room_locked(&a, &newcomer, &victim, &limit), 0);
    assert_null(victim);

    /* four: the longest-idle client of any uid makes room */
    fake_clients(&a, cs, f, 6);
    assert_int_equal(agent_client_room_locked(&a, &newcomer, &victim, &limit), 0);
    assert_ptr_equal(victim, &cs[2]);
    assert_string_equal(limit, "max-clients");

    /* all busy (or closing): refused */
    atomic_store(&cs[0].state, AGENT_CONN_BUSY);
    atomic_store(&cs[2].state, AGENT_CONN_BUSY);
    assert_int_equal(agent_client_room_locked(&a, &newcomer, &victim, &limit), -EBUSY);
    assert_null(victim);
}

static void test_agent_conf_connection_limits(void **state)
{
    agent_conf_t c = {0};
    char *err = NULL;

    assert_int_equal(agent_conf_parse("[agent]\nmax-clients-per-user = 16\nauth-timeout = 2\n"
                                      "client-idle-timeout = 600\n",
                                      "t.conf", &c, &err),
                     0);
    assert_int_equal(c.max_clients_per_user, 16);
    assert_int_equal(c.auth_timeout_s, 2);
    assert_int_equal(c.client_idle_s, 600);
    agent_conf_clear(&c);

    expect_conf_error("[agent]\nmax-clients-per-user = 0\n", "bad.conf:2: max-clients-per-user = '0': expected a whole number from 1 to 65536");
    expect_conf_error("[agent]\nmax-clients-per-user = lots\n", "max-clients-per-user = 'lots'");
    expect_conf_error("[agent]\nauth-timeout = 0\n", "bad.conf:2: auth-timeout = '0': out of range");
    expect_conf_error("[agent]\nauth-timeout = 3601\n", "from 1s to 1h");
    expect_conf_error("[agent]\nauth-timeout = -1\n", "auth-timeout = '-1': not a duration");
    expect_conf_error("[agent]\nclient-idle-timeout = 1y\n", "client-idle-timeout = '1y': not a duration");
    expect_conf_error("[token pkcs11:token=a]\nauth-timeout = 5\n", "it belongs in [agent]");
}

static void test_agent_conf_max_sessions(void **state)
{
    agent_conf_t c = {0};
    char *err = NULL;

    assert_int_equal(agent_conf_parse("[agent]\nmax-sessions = 16\n"
                                      "[token pkcs11:token=hsm]\nmax-sessions = 2\n"
                                      "[token pkcs11:token=card]\npin-source = file:/p\n",
                                      "t.conf", &c, &err),
                     0);
    assert_int_equal(c.max_sessions, 16);
    assert_int_equal(c.n_tokens, 2);
    assert_int_equal(c.tokens[0].max_sessions, 2);
    assert_int_equal(c.tokens[1].max_sessions, 0); /* not set: [agent]'s */
    agent_conf_clear(&c);
    assert_int_equal(agent_conf_parse("[token pkcs11:token=a]\nmax-sessions = 4096\n", "t.conf",
                                      &c, &err),
                     0);
    assert_int_equal(c.tokens[0].max_sessions, 4096);
    assert_int_equal(c.max_sessions, 0);
    agent_conf_clear(&c);

    expect_conf_error("[token pkcs11:token=a]\nmax-sessions = 0\n",
                      "bad.conf:2: max-sessions = '0': expected a whole number from 1 to 4096");
    expect_conf_error("[agent]\nmax-sessions = 4097\n",
                      "max-sessions = '4097': expected a whole number from 1 to 4096");
    expect_conf_error("[token pkcs11:token=a]\nmax-sessions = 8\nmax-sessions = 9\n",
                      "max-sessions is set twice");
    expect_conf_error("[key pkcs11:object=a]\nmax-sessions = 8\n",
                      "'max-sessions' is not a setting of [key pkcs11:...]");
}

static void test_agent_pin_source_credential_and_strict(void **state)
{
    agent_pin_source_t src = {0};
    agent_secret_t s = {0};
    char *err = NULL, *path;

    unsetenv("CREDENTIALS_DIRECTORY");
    assert_int_equal(agent_pin_source_parse("credential:pin", &src, &err), -EINVAL);
    assert_non_null(strstr(err, "CREDENTIALS_DIRECTORY"));
    free(err);
    err = NULL;
    setenv("CREDENTIALS_DIRECTORY", tmpdir, 1);
    free(write_file("cred-pin", "4711\n", 5, 0400));
    assert_int_equal(agent_pin_source_parse("credential:cred-pin", &src, &err), 0);
    assert_int_equal(agent_pin_source_read(&src, &s, NULL, &err), 0);
    assert_memory_equal(s.buf, "4711", 4);
    agent_secret_free(&s);
    agent_pin_source_clear(&src);
    assert_int_equal(agent_pin_source_parse("credential:../x", &src, &err), -EINVAL);
    free(err);
    err = NULL;
    assert_int_equal(agent_pin_source_parse("file:relative/pin", &src, &err), -EINVAL);
    free(err);
    err = NULL;

    /* strict (system mode): a world-readable PIN file is refused */
    path = write_file("world-pin", "1234", 4, 0644);
    chmod(path, 0644);
    src = (agent_pin_source_t){.kind = AGENT_PIN_FILE, .path = path, .strict = true};
    assert_int_equal(agent_pin_source_read(&src, &s, NULL, &err), -EPERM);
    assert_null(s.buf);
    assert_non_null(strstr(err, "every user"));
    free(err);
    err = NULL;
    src.strict = false;
    assert_int_equal(agent_pin_source_read(&src, &s, NULL, &err), 0);
    agent_secret_free(&s);
    free(path);
}

/* Runs fn with stderr sent to a file; returns what was written (malloc'd). */
static char *capture_stderr(void (*fn)(void *), void *arg)
{
    char path[128], *buf = calloc(1, 65536);
    int fd, saved;
    ssize_t n;

    assert_non_null(buf);
    snprintf(path, sizeof(path), "%s/stderr.log", tmpdir);
    fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    fflush(stderr);
    saved = dup(STDERR_FILENO);
    dup2(fd, STDERR_FILENO);
    fn(arg);
    fflush(stderr);
    dup2(saved, STDERR_FILENO);
    close(saved);
    n = pread(fd, buf, 65535, 0);
    assert_true(n > 0);
    close(fd);
    return buf;
}

/* Every line is one line: a '\n' only at its end, no other control byte,
 * nothing that is not UTF-8. */
static void assert_clean_lines(const char *out, size_t lines)
{
    size_t seen = 0;

    for (const unsigned char *p = (const unsigned char *)out; *p; p++) {
        if (*p == '\n')
            seen++;
        else
            assert_false(*p < 0x20 || *p == 0x7f);
    }
    assert_int_equal(seen, lines);
    assert_true(text_utf8_valid(out, strlen(out)));
}

static void log_forged(void *arg)
{
    agent_warn("refused a client (%s)", (const char *)arg);
}

static void test_agent_log_escapes_control_and_bad_utf8(void **state)
{
    const char *evil = "/tmp/x\n<3>p11agentd: error: forged\r\x1b[2J\xff caf\xc3\xa9 \"q\"";
    char *out = capture_stderr(log_forged, (void *)evil);

    assert_clean_lines(out, 1);
    /* the bytes are shown escaped, good characters and quotes unchanged */
    assert_non_null(strstr(out, "/tmp/x\\n<3>p11agentd: error: forged\\r\\x1b[2J\\xff caf\xc3\xa9 "
                                "\"q\""));
    free(out);
}

static void log_long(void *arg)
{
    /* "é" * 3000 is 6000 bytes: the line is cut, at an odd byte: inside one */
    agent_info("%s", (const char *)arg);
}

static void test_agent_log_cut_keeps_utf8(void **state)
{
    char *long_text = malloc(6001), *out;

    assert_non_null(long_text);
    for (int i = 0; i < 3000; i++)
        memcpy(long_text + 2 * i, "\xc3\xa9", 2);
    long_text[6000] = '\0';
    out = capture_stderr(log_long, long_text);
    assert_clean_lines(out, 1);
    free(out);
    free(long_text);
}

static void audit_evil(void *arg)
{
    agent_t a = {.audit = AGENT_AUDIT_ALL, .audit_fd = -1};
    agent_client_t c = {.uid = 1000, .pid = 42};

    snprintf(c.exe, sizeof(c.exe), "%s", (const char *)arg);
    agent_audit(&a, &c, "sign", "pkcs11:object=k\" uid=0", "ecdsa", "sha256 uid=0", "denied", 0);
}

static void test_agent_audit_quotes_client_strings(void **state)
{
    const char *evil = "/tmp/a\" result=\"ok\n<6>p11agentd: audit: forged\xfe";
    char *out = capture_stderr(audit_evil, (void *)evil);

    assert_clean_lines(out, 1);
    assert_non_null(strstr(out, "key=\"pkcs11:object=k\\\" uid=0\" "));
    assert_non_null(strstr(out, "mechanism=ecdsa/sha256?uid?0 uid=1000 pid=42 "));
    assert_non_null(strstr(out, "exe=\"/tmp/a\\\" result=\\\"ok\\n<6>p11agentd: audit: "
                                "forged\\xfe\" result=\"denied\""));
    free(out);
}

/* agent.conf names modules and the pinentry: a file others can change is
 * refused, naming the file, owner, mode and the fix. */
static void test_agent_conf_refuses_writable_or_foreign_file(void **state)
{
    agent_conf_t c = {0};
    char *err = NULL, *path = write_file("perm.conf", "[agent]\n", 8, 0600);

    chmod(path, 0664);
    assert_int_equal(agent_conf_load(path, true, &c, &err), -EPERM);
    assert_non_null(strstr(err, path));
    assert_non_null(strstr(err, "writable by its group"));
    assert_non_null(strstr(err, "mode 0664"));
    assert_non_null(strstr(err, "chmod go-w"));
    free(err);
    err = NULL;
    chmod(path, 0646);
    assert_int_equal(agent_conf_load(path, false, &c, &err), -EPERM);
    assert_non_null(strstr(err, "every user"));
    free(err);
    err = NULL;
    chmod(path, 0644);
    assert_int_equal(agent_conf_load(path, true, &c, &err), 0);
    agent_conf_clear(&c);
    if (geteuid() == 0) {
        /* CI runs as root: a file of another user (not root) */
        assert_int_equal(chown(path, 65534, 65534), 0);
        assert_int_equal(agent_conf_load(path, true, &c, &err), -EPERM);
        assert_non_null(strstr(err, "owned by uid 65534"));
        assert_non_null(strstr(err, "chown"));
        free(err);
        err = NULL;
    }
    free(path);
}

/* --- one PIN_MAX on every path --- */

static void test_agent_pin_max_file(void **state)
{
    char pin[PIN_MAX + 2];

    memset(pin, '5', sizeof(pin));
    read_pin_expect_len(pin, PIN_MAX);
    expect_pin_error(pin, PIN_MAX + 1, -E2BIG, "over " PIN_MAX_STR " bytes");
}

/* A pinentry that answers GETPIN with n digits. */
static char *pinentry_answering(size_t n)
{
    char *script = NULL, *path;
    int len;

    len = asprintf(&script,
                   "#!/bin/sh\necho 'OK hello'\nwhile read -r l; do case $l in\n"
                   "GETPIN) printf 'D %%0%zud\\nOK\\n' 0;;\nBYE) echo OK; exit 0;;\n"
                   "*) echo OK;; esac; done\n",
                   n);
    assert_true(len > 0);
    path = write_file("pinentry.sh", script, (size_t)len, 0700);
    chmod(path, 0700);
    free(script);
    return path;
}

static void test_agent_pin_max_prompt(void **state)
{
    agent_prompt_t p = {.token_label = "t", .key_label = "k"};
    agent_secret_t pin = {0};
    agent_t a = {0};
    char *err = NULL;

    pthread_mutex_init(&a.prompter_lock, NULL);
    a.pinentry = pinentry_answering(PIN_MAX);
    assert_int_equal(agent_prompt_pin(&a, &p, &pin, &err), 0);
    assert_int_equal(pin.len, PIN_MAX);
    agent_secret_free(&pin);
    free(a.pinentry);

    a.pinentry = pinentry_answering(PIN_MAX + 1);
    assert_int_equal(agent_prompt_pin(&a, &p, &pin, &err), -E2BIG);
    assert_null(pin.buf);
    assert_non_null(err);
    assert_non_null(strstr(err, "longer than " PIN_MAX_STR " bytes"));
    free(err);
    free(a.pinentry);
    pthread_mutex_destroy(&a.prompter_lock);
}

/* --- access policy: fail closed, allow-exe checked per request --- */

static agent_client_t self_client(void)
{
    agent_client_t c = {.uid = getuid(), .gid = getgid(), .pid = getpid()};

    assert_int_equal(agent_proc_identity(c.pid, c.exe, sizeof(c.exe), &c.start_time), 0);
    return c;
}

static void test_agent_policy_fails_closed_without_table(void **state)
{
    agent_key_policy_t pol = {.uri = "pkcs11:object=k"};
    agent_t a = {0};
    agent_client_t c = self_client();
    char why[512] = "";

    /* no [key] section: every key is open */
    assert_true(agent_key_allowed_locked(&a, 0, &c, why, sizeof(why)));
    /* [key] sections configured but the table is missing (out of memory
     * in agent_policy_update_locked): every key is refused, saying why */
    a.conf.keys = &pol;
    a.conf.n_keys = 1;
    assert_false(agent_key_allowed_locked(&a, 0, &c, why, sizeof(why)));
    assert_non_null(strstr(why, "out of memory"));
    /* a key beyond the table (scanned after it was made) is refused too */
    {
        const agent_key_policy_t *table[1] = {NULL};

        a.key_policies = table;
        a.n_key_policies = 1;
        assert_true(agent_key_allowed_locked(&a, 0, &c, why, sizeof(why)));
        why[0] = '\0';
        assert_false(agent_key_allowed_locked(&a, 1, &c, why, sizeof(why)));
        assert_non_null(strstr(why, "out of memory"));
    }
}

static void test_agent_policy_exe_checked_per_request(void **state)
{
    agent_client_t c = self_client();
    char *exes[1] = {c.exe};
    agent_key_policy_t pol = {.uri = "pkcs11:object=k", .exes = exes, .n_exes = 1};
    const agent_key_policy_t *table[1] = {&pol};
    agent_t a = {.key_policies = table, .n_key_policies = 1};
    char why[768] = "", small[8];
    unsigned long long start;

    a.conf.keys = &pol;
    a.conf.n_keys = 1;
    assert_true(agent_key_allowed_locked(&a, 0, &c, why, sizeof(why)));

    /* the same pid, another process (pid reuse): refused */
    c.start_time++;
    assert_false(agent_key_allowed_locked(&a, 0, &c, why, sizeof(why)));
    assert_non_null(strstr(why, "pid was reused"));
    c.start_time--;

    /* connected as another program, which then exec'd the allowed one */
    snprintf(c.exe, sizeof(c.exe), "/usr/bin/not-the-allowed-one");
    exes[0] = "/usr/bin/not-the-allowed-one";
    assert_false(agent_key_allowed_locked(&a, 0, &c, why, sizeof(why)));
    assert_non_null(strstr(why, "changed since it connected"));
    assert_non_null(strstr(why, "not-the-allowed-one"));
    c = self_client();
    exes[0] = c.exe;

    /* a path that does not fit is reported as cut, never used */
    assert_int_equal(agent_proc_identity(getpid(), small, sizeof(small), &start), -ENAMETOOLONG);
    assert_int_equal(strlen(small), sizeof(small) - 1);

    /* a process that is gone */
    c.pid = 0x3ffffff0;
    assert_false(agent_key_allowed_locked(&a, 0, &c, why, sizeof(why)));
    assert_non_null(strstr(why, "has exited"));
}

static void test_agent_policy_deleted_exe_refused(void **state)
{
    char *copy = NULL, cmd[512], why[768] = "", exe[1024];
    agent_client_t c = {.uid = getuid(), .gid = getgid()};
    pid_t pid;
    int st;

    assert_true(asprintf(&copy, "%s/sleep-copy", tmpdir) > 0);
    snprintf(cmd, sizeof(cmd), "cp \"$(command -v sleep)\" '%s'", copy);
    assert_int_equal(system(cmd), 0);
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        execl(copy, "sleep-copy", "30", (char *)NULL);
        _exit(127);
    }
    c.pid = pid;
    /* wait for the exec */
    for (int i = 0; i < 200; i++) {
        if (agent_proc_identity(pid, c.exe, sizeof(c.exe), &c.start_time) == 0 &&
            strcmp(c.exe, copy) == 0)
            break;
        usleep(10000);
    }
    assert_string_equal(c.exe, copy);
    assert_int_equal(agent_client_exe_check(&c, exe, sizeof(exe), why, sizeof(why)), 0);
    assert_int_equal(unlink(copy), 0);
    assert_int_equal(agent_client_exe_check(&c, exe, sizeof(exe), why, sizeof(why)), -ENOENT);
    assert_non_null(strstr(why, "deleted"));
    kill(pid, SIGKILL);
    waitpid(pid, &st, 0);
    free(copy);
}

static void test_agent_policy_lock_unlock_owner_root_and_setting(void **state)
{
    agent_t a = {.owner = 4000, .system_mode = true};
    agent_client_t c = {.uid = 4001, .gid = 4001};
    char *err = NULL;

    assert_int_equal(agent_conf_parse("[agent]\nallow-users = 4001 4002\n"
                                      "allow-unlock-users = 4002\nallow-unlock-groups = 777\n",
                                      "t.conf", &a.conf, &err),
                     0);
    assert_false(agent_may_lock_unlock(&a, &c)); /* admitted, but only to sign */
    c.uid = 4002;
    assert_true(agent_may_lock_unlock(&a, &c));
    c = (agent_client_t){.uid = 4003, .gid = 777};
    assert_true(agent_may_lock_unlock(&a, &c));
    c = (agent_client_t){.uid = 0, .gid = 0};
    assert_true(agent_may_lock_unlock(&a, &c));
    c = (agent_client_t){.uid = 4000, .gid = 4000};
    assert_true(agent_may_lock_unlock(&a, &c));
    agent_conf_clear(&a.conf);
}

/* Runs agent_prompt_pin against a scripted pinentry whose GETPIN answer is
 * the D line(s) `data`; returns its status, the PIN in *pin. */
static int prompt_with(const char *data, agent_secret_t *pin, char **err)
{
    char *script = NULL, *path;
    agent_t a;
    agent_prompt_t p = {.token_label = "tok"};
    int r;

    assert_true(asprintf(&script,
                         "#!/bin/sh\necho 'OK hello'\nwhile read -r l; do case $l in\n"
                         "GETPIN) printf '%%s\\n' %s; echo OK;;\n"
                         "BYE) echo OK; exit 0;;\n*) echo OK;;\nesac; done\n",
                         data) > 0);
    path = write_file("pinentry.sh", script, strlen(script), 0700);
    memset(&a, 0, sizeof(a));
    pthread_mutex_init(&a.prompter_lock, NULL);
    a.pinentry = path;
    *err = NULL;
    r = agent_prompt_pin(&a, &p, pin, err);
    pthread_mutex_destroy(&a.prompter_lock);
    free(path);
    free(script);
    return r;
}

static void test_agent_prompt_percent_decoding(void **state)
{
    agent_secret_t pin = {0};
    char *err = NULL;
    char long_pin[400];

    /* escapes decode; two D lines join */
    assert_int_equal(prompt_with("'D 12%2534%41' 'D b'", &pin, &err), 0);
    assert_int_equal(pin.len, 7);
    assert_string_equal(pin.buf, "12%34Ab");
    agent_secret_free(&pin);
    free(err);
    /* a bad escape or an escaped NUL is refused, never a NUL inside the PIN */
    const char *bad[] = { "'D 12%zz34'", "'D 1234%4'", "'D 12%0034'", "'D ok' 'D %g1'" };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(prompt_with(bad[i], &pin, &err), -EPROTO);
        assert_null(pin.buf);
        assert_non_null(err);
        assert_non_null(strstr(err, "malformed PIN"));
        free(err);
    }
    /* too long: refused, not cut */
    memcpy(long_pin, "'D ", 3);
    memset(long_pin + 3, '7', 300);
    memcpy(long_pin + 303, "'", 2);
    assert_int_equal(prompt_with(long_pin, &pin, &err), -E2BIG);
    assert_null(pin.buf);
    free(err);
}

static char *read_all(const char *path)
{
    FILE *f = fopen(path, "r");
    char *buf = calloc(1, 65536);
    size_t n;

    assert_non_null(f);
    assert_non_null(buf);
    n = fread(buf, 1, 65535, f);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

static size_t count_lines(const char *s)
{
    size_t n = 0;

    for (; *s; s++)
        n += *s == '\n';
    return n;
}

static void test_agent_conf_durations_take_units(void **state)
{
    static const struct {
        const char *setting;
        size_t field;
    } durations[] = {
        {"cache-idle", offsetof(agent_conf_t, cache_idle_s)},
        {"cache-max", offsetof(agent_conf_t, cache_max_s)},
        {"idle-exit", offsetof(agent_conf_t, idle_exit_s)},
        {"poll-interval", offsetof(agent_conf_t, poll_interval_s)},
        {"auth-timeout", offsetof(agent_conf_t, auth_timeout_s)},
        {"client-idle-timeout", offsetof(agent_conf_t, client_idle_s)},
    };
    static const struct {
        const char *value;
        unsigned seconds;
    } values[] = {{"30", 30}, {"30s", 30}, {"15m", 900}, {"1h", 3600}, {"8h", 28800},
                  {"1d", 86400}};

    for (size_t i = 0; i < sizeof(durations) / sizeof(durations[0]); i++) {
        for (size_t j = 0; j < sizeof(values) / sizeof(values[0]); j++) {
            agent_conf_t c = {0};
            char text[128], *err = NULL;
            bool fits = strcmp(durations[i].setting, "auth-timeout") != 0 ||
                        values[j].seconds <= 3600;

            snprintf(text, sizeof(text), "[agent]\n%s = %s\n", durations[i].setting,
                     values[j].value);
            if (!fits) {
                expect_conf_error(text, "out of range: expected a duration from 1s to 1h");
                continue;
            }
            if (agent_conf_parse(text, "t.conf", &c, &err) != 0)
                fail_msg("%s: %s", text, err);
            assert_int_equal(*(unsigned *)((char *)&c + durations[i].field), values[j].seconds);
            agent_conf_clear(&c);
        }
    }
    expect_conf_error("[agent]\ncache-idle = 15 m\n", "cache-idle = '15 m': not a duration");
    expect_conf_error("[agent]\ncache-idle = 1w\n", "cache-idle = '1w': not a duration");
    expect_conf_error("[agent]\ncache-idle = m\n", "not a duration");
    expect_conf_error("[agent]\ncache-idle = 366d\n",
                      "bad.conf:2: cache-idle = '366d': out of range: expected a duration from "
                      "0 to 365d");
    expect_conf_error("[agent]\ncache-max = 99999999999999999999d\n", "out of range");
    expect_conf_error("[agent]\npoll-interval = 0\n", "poll-interval = '0': out of range");

    /* the command line's --idle-exit reads the same way */
    unsigned v = 0;
    assert_int_equal(agent_conf_parse_duration("10m", 0, 86400, &v), 0);
    assert_int_equal(v, 600);
    assert_int_equal(agent_conf_parse_duration("2d", 0, 86400, &v), -ERANGE);
    assert_int_equal(agent_conf_parse_duration("", 0, 86400, &v), -EINVAL);
    assert_int_equal(agent_conf_parse_duration("5ss", 0, 86400, &v), -EINVAL);
}

static void test_agent_conf_numbers_name_setting_value_range(void **state)
{
    expect_conf_error("[agent]\nmax-clients = many\n",
                      "bad.conf:2: max-clients = 'many': expected a whole number from 1 to 65536");
    expect_conf_error("[agent]\nmax-clients = 65537\n",
                      "max-clients = '65537': expected a whole number from 1 to 65536");
    expect_conf_error("[agent]\nmax-clients-per-user = 0\n",
                      "max-clients-per-user = '0': expected a whole number from 1 to 65536");
    expect_conf_error("[agent]\nalways-auth = maybe\n",
                      "always-auth = 'maybe': expected prompt or stored");
    expect_conf_error("[agent]\npinentry = pinentry-gtk\n",
                      "pinentry = 'pinentry-gtk': expected an absolute path");
    expect_conf_error("[agent]\naudit-file = audit.log\n",
                      "audit-file = 'audit.log': expected an absolute path");
}

static void test_agent_conf_duplicate_names_both_lines(void **state)
{
    agent_conf_t c = {0};
    char *err = NULL;

    expect_conf_error("[agent]\ncache-idle = 5m\n# a comment\ncache-idle = 10m\n",
                      "bad.conf:4: cache-idle is set twice in [agent] (first at line 2)");
    /* a second [agent] section is the same section */
    expect_conf_error("[agent]\naudit = all\n[key pkcs11:object=a]\n[agent]\naudit = none\n",
                      "bad.conf:5: audit is set twice in [agent] (first at line 2)");
    expect_conf_error("[token pkcs11:token=a]\npin-source = file:/a\npin-source = file:/b\n",
                      "bad.conf:3: pin-source is set twice in [token pkcs11:token=a] (first at "
                      "line 2)");
    /* the same name in another section, or in the next [token], is not a repeat */
    assert_int_equal(agent_conf_parse("[agent]\npin-source = file:/a\n"
                                      "[token pkcs11:token=a]\npin-source = file:/b\n"
                                      "[token pkcs11:token=b]\npin-source = file:/c\n",
                                      "t.conf", &c, &err),
                     0);
    assert_int_equal(c.n_tokens, 2);
    assert_string_equal(c.tokens[1].pin_source, "file:/c");
    agent_conf_clear(&c);
    /* lists may repeat: each line adds */
    assert_int_equal(agent_conf_parse("[agent]\nmodule = /a.so\nmodule = /b.so /c.so\n"
                                      "allow-users = 0\nallow-users = 1\nallow-groups = 0\n"
                                      "allow-groups = 2\nallow-unlock-users = 0\n"
                                      "allow-unlock-users = 3\n"
                                      "[key pkcs11:object=a]\nallow-exe = /x\nallow-exe = /y\n"
                                      "allow-users = 0\nallow-users = 1\n",
                                      "t.conf", &c, &err),
                     0);
    assert_int_equal(c.n_modules, 3);
    assert_string_equal(c.modules[2], "/c.so");
    assert_int_equal(c.allow.n_uids, 2);
    assert_int_equal(c.allow.n_gids, 2);
    assert_int_equal(c.allow_unlock.n_uids, 2);
    assert_int_equal(c.keys[0].n_exes, 2);
    assert_int_equal(c.keys[0].allow.n_uids, 2);
    agent_conf_clear(&c);
}

static void test_agent_conf_key_confirm(void **state)
{
    agent_conf_t c = {0};
    char *err = NULL;

    assert_int_equal(agent_conf_parse("[key pkcs11:object=a]\nconfirm = yes\n"
                                      "[key pkcs11:object=b]\nconfirm = 10m\n"
                                      "[key pkcs11:object=c]\nconfirm = no\n",
                                      "t.conf", &c, &err),
                     0);
    assert_int_equal(c.n_keys, 3);
    assert_true(c.keys[0].confirm);
    assert_int_equal(c.keys[0].confirm_s, 0);
    assert_true(c.keys[1].confirm);
    assert_int_equal(c.keys[1].confirm_s, 600);
    assert_false(c.keys[2].confirm);
    agent_conf_clear(&c);
    assert_int_equal(agent_conf_parse("[key pkcs11:object=a]\nconfirm = sometimes\n", "t.conf",
                                      &c, &err),
                     -EINVAL);
    assert_non_null(strstr(err, "confirm = 'sometimes': expected yes"));
    free(err);
    agent_conf_clear(&c);
}

static void test_agent_conf_key_decrypt(void **state)
{
    agent_conf_t c = {0};
    char *err = NULL;

    (void)state;
    assert_int_equal(agent_conf_parse("[key pkcs11:object=a]\ndecrypt = yes\n"
                                      "[key pkcs11:object=b]\ndecrypt = no\n"
                                      "[key pkcs11:object=c]\nconfirm = yes\n",
                                      "t.conf", &c, &err),
                     0);
    assert_int_equal(c.n_keys, 3);
    assert_true(c.keys[0].decrypt);
    assert_false(c.keys[1].decrypt);
    assert_false(c.keys[2].decrypt); /* the default: off */
    agent_conf_clear(&c);
    assert_int_equal(agent_conf_parse("[key pkcs11:object=a]\ndecrypt = tls\n", "t.conf", &c,
                                      &err),
                     -EINVAL);
    assert_non_null(strstr(err, "t.conf:2"));
    assert_non_null(strstr(err, "decrypt = 'tls': expected yes or no"));
    free(err);
    agent_conf_clear(&c);
    /* a [key] setting, not an [agent] one */
    err = NULL;
    assert_int_equal(agent_conf_parse("[agent]\ndecrypt = yes\n", "t.conf", &c, &err), -EINVAL);
    assert_non_null(err);
    free(err);
    agent_conf_clear(&c);
}

static void test_agent_conf_section_uri_errors(void **state)
{
    expect_conf_error("[agent]\n[key notauri]\n",
                      "bad.conf:2: [key notauri]: 'notauri' is not a pkcs11: URI; a [key] "
                      "section names the keys it applies to with one");
    expect_conf_error("[token hsm1]\n", "bad.conf:1: [token hsm1]: 'hsm1' is not a pkcs11: URI");
    expect_conf_error("[key]\n", "[key] needs a pkcs11: URI naming the keys");
    expect_conf_error("[token ]\n", "[token] needs a pkcs11: URI naming the tokens");
    /* a typo in an attribute would make the policy select no key */
    expect_conf_error("[key pkcs11:objekt=web]\n",
                      "[key pkcs11:objekt=web]: the URI does not parse or has an attribute");
    expect_conf_error("[agent x]\n", "[agent] takes no argument");
    expect_conf_error("[agents]\n", "unknown section [agents]");
}

static void test_agent_conf_audit_file(void **state)
{
    agent_conf_t c = {0};
    char *err = NULL;

    assert_int_equal(agent_conf_parse("[agent]\naudit-file = /var/log/p11agent/audit.log\n",
                                      "t.conf", &c, &err),
                     0);
    assert_string_equal(c.audit_file, "/var/log/p11agent/audit.log");
    agent_conf_clear(&c);
    assert_null(c.audit_file);

    /* opened: created 0600, appended to */
    char *path = NULL, *moved = NULL, *link = NULL, *text;
    agent_client_t cl = {.uid = 1000, .pid = 42};
    struct stat st;
    agent_t a;
    int fd;

    assert_true(asprintf(&path, "%s/audit.log", tmpdir) > 0);
    assert_true(asprintf(&moved, "%s/audit.log.1", tmpdir) > 0);
    assert_true(asprintf(&link, "%s/audit-link.log", tmpdir) > 0);
    assert_int_equal(agent_init(&a), 0);
    a.audit = AGENT_AUDIT_ALL;
    fd = agent_audit_open(path, &err);
    assert_true(fd >= 0);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0600);
    agent_audit_set_fd(&a, fd, strdup(path));
    snprintf(cl.exe, sizeof(cl.exe), "/usr/bin/openssl");
    agent_audit(&a, &cl, "sign", "pkcs11:object=k", "ecdsa", "sha256", "ok", 12);
    agent_audit(&a, &cl, "sign", "pkcs11:object=k", "ecdsa", "sha256", "denied", 0);
    /* rotation: moved away, reopened (SIGHUP): the next line goes to the new file */
    assert_int_equal(rename(path, moved), 0);
    fd = agent_audit_open(path, &err);
    assert_true(fd >= 0);
    agent_audit_set_fd(&a, fd, strdup(path));
    agent_audit(&a, &cl, "unlock", "pkcs11:token=t", NULL, NULL, "ok", 0);
    text = read_all(moved);
    assert_int_equal(count_lines(text), 2);
    assert_non_null(strstr(text, "event=sign key=\"pkcs11:object=k\" mechanism=ecdsa/sha256 "
                                 "uid=1000 pid=42 exe=\"/usr/bin/openssl\" result=\"ok\" "
                                 "duration_us=12\n"));
    assert_non_null(strstr(text, "result=\"denied\""));
    assert_int_equal(strncmp(text, "time=", 5), 0);
    free(text);
    text = read_all(path);
    assert_int_equal(count_lines(text), 1);
    assert_non_null(strstr(text, "event=unlock key=\"pkcs11:token=t\""));
    free(text);
    /* refusals only: an ok signature is not written */
    a.audit = AGENT_AUDIT_REFUSALS;
    agent_audit(&a, &cl, "sign", "pkcs11:object=k", "ecdsa", "sha256", "ok", 12);
    text = read_all(path);
    assert_int_equal(count_lines(text), 1);
    free(text);
    agent_done(&a);

    /* a symlink is not followed; a file others may write is refused */
    assert_int_equal(symlink(moved, link), 0);
    assert_int_equal(agent_audit_open(link, &err), -ELOOP);
    assert_non_null(strstr(err, link));
    assert_non_null(strstr(err, "symbolic link"));
    chmod(path, 0620);
    assert_int_equal(agent_audit_open(path, &err), -EPERM);
    assert_non_null(strstr(err, "writable by its group"));
    assert_non_null(strstr(err, "audit records"));
    free(err);
    free(path);
    free(moved);
    free(link);
}

/* audit-interval: parsed with its limits; 0 is a value of its own */
static void test_agent_conf_audit_interval(void **state)
{
    agent_conf_t c = {0};
    char *err = NULL;

    (void)state;
    assert_int_equal(agent_conf_parse("[agent]\naudit = all\n", "t.conf", &c, &err), 0);
    assert_false(c.audit_interval_set);
    agent_conf_clear(&c);
    assert_int_equal(agent_conf_parse("[agent]\naudit-interval = 0\n", "t.conf", &c, &err), 0);
    assert_true(c.audit_interval_set);
    assert_int_equal(c.audit_interval_s, 0);
    agent_conf_clear(&c);
    assert_int_equal(agent_conf_parse("[agent]\naudit-interval = 5m\n", "t.conf", &c, &err), 0);
    assert_int_equal(c.audit_interval_s, 300);
    agent_conf_clear(&c);
    assert_int_equal(agent_conf_parse("[agent]\naudit-interval = 1h\n", "t.conf", &c, &err), 0);
    assert_int_equal(c.audit_interval_s, 3600);
    agent_conf_clear(&c);
    expect_conf_error("[agent]\naudit-interval = -1\n",
                      "bad.conf:2: audit-interval = '-1': not a duration: expected a duration from "
                      "0 to 1h (seconds, or a number with a unit: 30s, 15m, 8h, 1d); 0 records "
                      "every use");
    expect_conf_error("[agent]\naudit-interval = often\n", "audit-interval = 'often': not a "
                                                            "duration");
    expect_conf_error("[agent]\naudit-interval = 2h\n", "audit-interval = '2h': out of range");
    expect_conf_error("[agent]\naudit-interval = 99999999999999999999999\n",
                      "audit-interval = '99999999999999999999999': ");
    expect_conf_error("[agent]\naudit-interval = 1s 2s\n", "audit-interval = '1s 2s': not a");
    expect_conf_error("[key pkcs11:object=a]\naudit-interval = 1\n", "bad.conf:2:");
    free(err);
}

/* Counts the records of path and the uses they account for (count=N, or
 * 1 for a record without count=). */
static void audit_counts(const char *path, int *ret_records, unsigned long *ret_uses)
{
    char *text = read_all(path), *p;

    *ret_records = count_lines(text);
    *ret_uses = 0;
    for (p = text; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : p + strlen(p)) {
        const char *cnt = strstr(p, " count=");
        const char *eol = strchr(p, '\n');

        *ret_uses += cnt && (!eol || cnt < eol) ? strtoul(cnt + 7, NULL, 10) : 1;
    }
    free(text);
}

/* audit-interval: the first use written at once, the next ones of the same
 * (key, event, mechanism) counted into one summary written at the end;
 * every use accounted for exactly once; 0: a record per use. */
static void test_agent_audit_interval_counts(void **state)
{
    agent_client_t cl = {.uid = 1000, .pid = 42};
    agent_use_audit_t u = {.event = "sign", .alg = "ecdsa", .hash = "sha256", .duration_us = 10};
    char *path = NULL, *err = NULL, *text;
    unsigned long uses;
    int records, fd;
    agent_t a;

    (void)state;
    assert_true(asprintf(&path, "%s/interval.log", tmpdir) > 0);
    assert_int_equal(agent_init(&a), 0);
    agent_audit_batch_init(&cl.audit_batch);
    a.audit = AGENT_AUDIT_ALL;
    a.audit_interval_s = 3600;
    fd = agent_audit_open(path, &err);
    assert_true(fd >= 0);
    agent_audit_set_fd(&a, fd, strdup(path));
    /* 100 uses of k, 20 of k2, 5 of k with another hash: 3 records now */
    for (int i = 0; i < 125; i++) {
        snprintf(u.key, sizeof(u.key), "%s", i < 100 ? "pkcs11:object=k" : "pkcs11:object=k2");
        snprintf(u.hash, sizeof(u.hash), "%s", i >= 120 ? "sha384" : "sha256");
        if (i >= 120)
            snprintf(u.key, sizeof(u.key), "pkcs11:object=k");
        u.set = true;
        agent_audit_use(&a, &cl, &u);
        assert_false(u.set);
    }
    audit_counts(path, &records, &uses);
    assert_int_equal(records, 3);
    assert_true(agent_audit_due_ms(&cl, agent_now_ms()) > 3500 * 1000);
    /* nothing due yet; then the connection closes: the summaries */
    agent_audit_flush(&a, &cl, false);
    audit_counts(path, &records, &uses);
    assert_int_equal(records, 3);
    agent_audit_flush(&a, &cl, true);
    audit_counts(path, &records, &uses);
    assert_int_equal(records, 6);
    assert_int_equal(uses, 125);
    text = read_all(path);
    assert_non_null(strstr(text, "key=\"pkcs11:object=k\" mechanism=ecdsa/sha256 uid=1000 pid=42 "
                                 "exe=\"\" result=\"ok\" duration_us=10 count=99 since="));
    assert_non_null(strstr(text, "key=\"pkcs11:object=k2\" mechanism=ecdsa/sha256 uid=1000 "
                                 "pid=42 exe=\"\" result=\"ok\" duration_us=10 count=19 since="));
    free(text);
    assert_int_equal(agent_audit_due_ms(&cl, agent_now_ms()), -1);
    /* more keys than the table holds: still every use accounted for */
    for (int i = 0; i < 3 * AGENT_AUDIT_BATCH_MAX * 10; i++) {
        snprintf(u.key, sizeof(u.key), "pkcs11:object=m%d", i % (3 * AGENT_AUDIT_BATCH_MAX));
        u.set = true;
        agent_audit_use(&a, &cl, &u);
    }
    agent_audit_flush(&a, &cl, true);
    audit_counts(path, &records, &uses);
    assert_int_equal(uses, 125 + 3 * AGENT_AUDIT_BATCH_MAX * 10);
    /* audit-interval = 0: a record per use */
    a.audit_interval_s = 0;
    for (int i = 0; i < 10; i++) {
        u.set = true;
        agent_audit_use(&a, &cl, &u);
    }
    agent_audit_flush(&a, &cl, true);
    audit_counts(path, &records, &uses);
    assert_int_equal(uses, 135 + 3 * AGENT_AUDIT_BATCH_MAX * 10);
    agent_audit_batch_done(&cl.audit_batch);
    agent_done(&a);
    free(err);
    free(path);
}

static void log_init_unknown(void *arg)
{
    agent_log_init(arg);
}

/* --debug and P11AGENT_DEBUG go through agent_log_init: the same list. */
static void test_agent_log_debug_categories(void **state)
{
    static const struct {
        const char *name;
        unsigned bit;
    } cats[] = {{"bus", AGENT_DBG_BUS},
                {"sign", AGENT_DBG_SIGN},
                {"pin", AGENT_DBG_PIN},
                {"pkcs11", AGENT_DBG_PKCS11}};
    char *out;

    for (size_t i = 0; i < sizeof(cats) / sizeof(cats[0]); i++) {
        agent_log_init(cats[i].name);
        for (size_t j = 0; j < sizeof(cats) / sizeof(cats[0]); j++)
            assert_int_equal(agent_debug_enabled(cats[j].bit), i == j);
    }
    agent_log_init("all");
    for (size_t j = 0; j < sizeof(cats) / sizeof(cats[0]); j++)
        assert_true(agent_debug_enabled(cats[j].bit));
    agent_log_init("sign, pkcs11");
    assert_true(agent_debug_enabled(AGENT_DBG_SIGN));
    assert_true(agent_debug_enabled(AGENT_DBG_PKCS11));
    assert_false(agent_debug_enabled(AGENT_DBG_BUS));
    out = capture_stderr(log_init_unknown, (void *)"bus,pkcs12");
    assert_non_null(strstr(out, "unknown debug category 'pkcs12' ignored (known: bus, sign, pin, "
                                "pkcs11, all)"));
    assert_true(agent_debug_enabled(AGENT_DBG_BUS));
    free(out);
    agent_log_init(NULL);
    assert_false(agent_debug_enabled(AGENT_DBG_PKCS11));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_agent_pin_source_parse),
        cmocka_unit_test(test_agent_pin_file_reads_first_line),
        cmocka_unit_test(test_agent_pin_file_errors),
        cmocka_unit_test(test_agent_pin_id_changes_with_file),
        cmocka_unit_test(test_agent_pin_rejected_remembered),
        cmocka_unit_test(test_agent_err_from_tok_table),
        cmocka_unit_test(test_agent_loop_runs_fd_callbacks_until_quit),
        cmocka_unit_test(test_agent_conf_parses_every_section),
        cmocka_unit_test(test_agent_conf_errors_name_file_and_line),
        cmocka_unit_test(test_agent_conf_missing_file),
        cmocka_unit_test(test_agent_pin_source_credential_and_strict),
        cmocka_unit_test(test_agent_log_escapes_control_and_bad_utf8),
        cmocka_unit_test(test_agent_log_cut_keeps_utf8),
        cmocka_unit_test(test_agent_audit_quotes_client_strings),
        cmocka_unit_test(test_agent_conf_refuses_writable_or_foreign_file),
        cmocka_unit_test(test_agent_pin_max_file),
        cmocka_unit_test(test_agent_pin_max_prompt),
        cmocka_unit_test(test_agent_policy_fails_closed_without_table),
        cmocka_unit_test(test_agent_policy_exe_checked_per_request),
        cmocka_unit_test(test_agent_policy_deleted_exe_refused),
        cmocka_unit_test(test_agent_policy_lock_unlock_owner_root_and_setting),
        cmocka_unit_test(test_agent_limits_pending_victim),
        cmocka_unit_test(test_agent_limits_room_per_user),
        cmocka_unit_test(test_agent_limits_room_max_clients),
        cmocka_unit_test(test_agent_conf_connection_limits),
        cmocka_unit_test(test_agent_conf_max_sessions),
        cmocka_unit_test(test_agent_prompt_percent_decoding),
        cmocka_unit_test(test_agent_conf_durations_take_units),
        cmocka_unit_test(test_agent_conf_numbers_name_setting_value_range),
        cmocka_unit_test(test_agent_conf_duplicate_names_both_lines),
        cmocka_unit_test(test_agent_conf_section_uri_errors),
        cmocka_unit_test(test_agent_conf_key_confirm),
        cmocka_unit_test(test_agent_conf_key_decrypt),
        cmocka_unit_test(test_agent_conf_audit_file),
        cmocka_unit_test(test_agent_conf_audit_interval),
        cmocka_unit_test(test_agent_audit_interval_counts),
        cmocka_unit_test(test_agent_log_debug_categories),
    };

    return cmocka_run_group_tests(tests, setup, teardown);
}
