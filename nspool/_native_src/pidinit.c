/* The init of a pid namespace (its PID 1), as nspool starts it: the compiled
 * twin of nspool/_pidinit_child.py, with the same protocol, at a fraction of
 * a Python interpreter's memory and start-up time.
 *
 * Usage: _native_pidinit PROC_FLAGS|-
 *
 * PROC_FLAGS: first mount a /proc of the namespace on /proc with these mount
 * flags and answer on stdout "ok", or the mount's errno in decimal, then
 * close stdout; on a failed mount exit 1. "-": mount nothing, answer nothing.
 * Then reap every child (orphans of the namespace are reparented here) and
 * exit 0 when stdin reaches end of file: the set released the init, or the
 * process holding the pipe died. Its exit makes the kernel kill everything
 * else in the namespace.
 *
 * Signals as the Python init has them: SIGINT ignored, SIGCHLD reaps;
 * SIGPIPE and SIGXFSZ ignored as the interpreter ignores them (a write to a
 * closed stdout fails with EPIPE, status 1). Wrong arguments: a usage line
 * on stderr, status 2. A read or write error: status 1.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <unistd.h>

static const char usage[] =
    "usage: _native_pidinit PROC_FLAGS|-\n"
    "(a child program of nspool, started by it; not for direct use)\n";

static void reap(int signum)
{
    int saved = errno;
    (void)signum;
    while (waitpid(-1, NULL, WNOHANG) > 0)
        ;
    errno = saved;
}

static int decimal(const char *s)
{
    if (!*s)
        return 0;
    for (; *s; s++)
        if (*s < '0' || *s > '9')
            return 0;
    return 1;
}

static int write_all(int fd, const char *buf, size_t len)
{
    while (len) {
        ssize_t n = write(fd, buf, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Mount /proc with `flags`, answer on fd 1 and close it; 0 if mounted. */
static int mount_proc(unsigned long flags)
{
    char answer[24];
    size_t len;
    int failed = mount("proc", "/proc", "proc", flags, NULL) == -1;
    if (failed) {
        int err = errno, i = (int)sizeof(answer);
        do {
            answer[--i] = (char)('0' + err % 10);
            err /= 10;
        } while (err && i > 0);
        len = sizeof(answer) - (size_t)i;
        memmove(answer, answer + i, len);
    } else {
        memcpy(answer, "ok", 2);
        len = 2;
    }
    if (write_all(1, answer, len) == -1)
        return -1;
    close(1);
    return failed ? -1 : 0;
}

int main(int argc, char **argv)
{
    struct sigaction sa;
    char buf[64];

    if (argc != 2 || !(strcmp(argv[1], "-") == 0 || decimal(argv[1]))) {
        (void)write_all(2, usage, sizeof(usage) - 1);
        return 2;
    }
    memset(&sa, 0, sizeof(sa));
    sigemptyset(&sa.sa_mask);
    sa.sa_handler = SIG_IGN;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGPIPE, &sa, NULL);
    sigaction(SIGXFSZ, &sa, NULL);
    sa.sa_handler = reap;
    sa.sa_flags = SA_RESTART | SA_NOCLDSTOP;
    sigaction(SIGCHLD, &sa, NULL);

    if (strcmp(argv[1], "-") != 0) {
        unsigned long flags = 0;
        for (const char *p = argv[1]; *p; p++)
            flags = flags * 10 + (unsigned long)(*p - '0');
        if (mount_proc(flags) == -1)
            return 1;
    }
    for (;;) {
        ssize_t n = read(0, buf, sizeof(buf));
        if (n > 0)
            continue;
        if (n == 0)
            return 0;
        if (errno != EINTR)
            return 1;
    }
}
