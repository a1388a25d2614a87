/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Unit tests of agent/: PIN sources, error mapping, the main loop. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "agent.h"

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
    expect_conf_error("module = /x.so\n", "bad.conf:1: setting outside a section");
    expect_conf_error("[agent]\n\n\nfrobnicate = 1\n", "bad.conf:4: unknown setting here ('frobnicate')");
    expect_conf_error("[agent]\nallow-users = no-such-user-p11agent\n", "no such user ('no-such-user-p11agent')");
    expect_conf_error("[agent]\nallow-groups = no-such-group-p11agent\n", "no such group");
    expect_conf_error("[key pkcs11:object=x]\nallow-exe = openssl\n", "absolute paths ('openssl')");
    expect_conf_error("[key object=x]\n", "unknown section");
    expect_conf_error("[agent\n", "section header");
    expect_conf_error("[agent]\nthis line has no equals\n", "bad.conf:2: expected 'name = value'");
    expect_conf_error("[agent]\naudit = sometimes\n", "audit must be");
    expect_conf_error("[token pkcs11:token=a]\nallow-exe = /bin/sh\n", "unknown setting here");
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_agent_pin_source_parse),
        cmocka_unit_test(test_agent_pin_file_reads_first_line),
        cmocka_unit_test(test_agent_pin_file_errors),
        cmocka_unit_test(test_agent_pin_id_changes_with_file),
        cmocka_unit_test(test_agent_err_from_tok_table),
        cmocka_unit_test(test_agent_loop_runs_fd_callbacks_until_quit),
        cmocka_unit_test(test_agent_conf_parses_every_section),
        cmocka_unit_test(test_agent_conf_errors_name_file_and_line),
        cmocka_unit_test(test_agent_conf_missing_file),
        cmocka_unit_test(test_agent_pin_source_credential_and_strict),
    };

    return cmocka_run_group_tests(tests, setup, teardown);
}
