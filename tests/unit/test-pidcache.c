/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * agent/pidcache.c: the getpid() p11agentd defines for its whole process
 * must be the kernel's answer in the process and in every child that does
 * not share its memory, however it was made: fork(), and a raw clone()
 * that runs none of glibc's fork handlers (as _Fork() does). A child that
 * saw its parent's pid would keep its parent's random stream.
 */
#include <sched.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

static pid_t kernel_pid(void)
{
    return (pid_t)syscall(SYS_getpid);
}

/* In a child: exit 0 when getpid() tells the child's own pid. */
static void child_check(void)
{
    _exit(getpid() == kernel_pid() && getpid() == kernel_pid() ? 0 : 1);
}

static void wait_ok(pid_t pid)
{
    int st = 0;

    assert_true(pid > 0);
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
}

static void test_parent(void **state)
{
    (void)state;
    assert_int_equal(getpid(), kernel_pid());
    assert_int_equal(getpid(), kernel_pid()); /* cached now */
}

static void test_fork_child(void **state)
{
    pid_t pid;

    (void)state;
    assert_int_equal(getpid(), kernel_pid()); /* the parent's pid is cached */
    pid = fork();
    if (pid == 0)
        child_check();
    wait_ok(pid);
    assert_int_equal(getpid(), kernel_pid());
}

static void test_raw_clone_child(void **state)
{
    pid_t pid;

    (void)state;
    assert_int_equal(getpid(), kernel_pid());
    /* no CLONE_VM: a copy of the parent's memory, no atfork handler run */
    pid = (pid_t)syscall(SYS_clone, (unsigned long)SIGCHLD, NULL, NULL, NULL, NULL);
    if (pid == 0)
        child_check();
    wait_ok(pid);
    assert_int_equal(getpid(), kernel_pid());
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parent),
        cmocka_unit_test(test_fork_child),
        cmocka_unit_test(test_raw_clone_child),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
