/* nspool._native_ext: the workers' hop primitives, compiled.
 *
 * read_inodes, setns and check_and_return, with the same arguments and
 * results as the pure-Python fallbacks in nspool/_native.py. None of them
 * releases the GIL: each takes microseconds, and on a busy interpreter
 * getting the GIL back after a release can cost a switch interval.
 *
 * Baton and pass_baton: the hand-off between a submitter and a worker. A
 * Baton is a binary semaphore on a futex; pass_baton(to, mine, timeout)
 * lets go of the GIL first, then posts `to` and waits on `mine`, so the
 * thread it wakes can take the GIL at once instead of waking, finding the
 * GIL held, and sleeping again (two context switches saved per wake-up on
 * one CPU). The fallback in nspool/_native.py is a lock with the same API.
 */
#define PY_SSIZE_T_CLEAN
#define _GNU_SOURCE
#include <Python.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#ifndef SYS_kcmp
#error "no kcmp syscall number for this architecture"
#endif
#define KCMP_FILES 2
#define KCMP_FS 3

enum { CHECK_OK = 0, CHECK_FILES_DIFFER = 1, CHECK_FS_DIFFERS = 2, CHECK_LINK_MOVED = 3 };

/* The inode in namespace link `name` of directory `dirfd` ("net:[4026531840]"):
 * >= 0, or -errno. */
static long long inode_at(int dirfd, const char *name)
{
    char buf[64];
    ssize_t n;
    unsigned long long value = 0;
    const char *p, *end;

    do {
        n = readlinkat(dirfd, name, buf, sizeof(buf));
    } while (n == -1 && errno == EINTR);
    if (n == -1)
        return -errno;
    end = buf + n;
    p = memchr(buf, '[', (size_t)n);
    if (p == NULL || n < 3 || end[-1] != ']')
        return -EINVAL;
    for (p++; p < end - 1; p++) {
        if (*p < '0' || *p > '9')
            return -EINVAL;
        value = value * 10 + (unsigned long long)(*p - '0');
    }
    return (long long)value;
}

static int as_int(PyObject *obj, int *out)
{
    long value = PyLong_AsLong(obj);
    if (value == -1 && PyErr_Occurred())
        return -1;
    if (value < INT_MIN || value > INT_MAX) {
        PyErr_SetString(PyExc_OverflowError, "value out of range for a C int");
        return -1;
    }
    *out = (int)value;
    return 0;
}

static int check_names(PyObject *names)
{
    if (!PyTuple_CheckExact(names)) {
        PyErr_SetString(PyExc_TypeError, "names must be a tuple of bytes");
        return -1;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(names); i++)
        if (!PyBytes_Check(PyTuple_GET_ITEM(names, i))) {
            PyErr_SetString(PyExc_TypeError, "names must be a tuple of bytes");
            return -1;
        }
    return 0;
}

static PyObject *read_inodes(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    int dirfd;
    PyObject *names, *result;
    (void)self;

    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "read_inodes(dirfd, names) takes 2 arguments");
        return NULL;
    }
    if (as_int(args[0], &dirfd) == -1 || check_names(names = args[1]) == -1)
        return NULL;
    result = PyTuple_New(PyTuple_GET_SIZE(names));
    if (result == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(names); i++) {
        PyObject *name = PyTuple_GET_ITEM(names, i), *value;
        long long inode = inode_at(dirfd, PyBytes_AS_STRING(name));
        if (inode < 0) {
            errno = (int)-inode;
            PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, name);
            Py_DECREF(result);
            return NULL;
        }
        value = PyLong_FromLongLong(inode);
        if (value == NULL) {
            Py_DECREF(result);
            return NULL;
        }
        PyTuple_SET_ITEM(result, i, value);
    }
    return result;
}

static PyObject *native_setns(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    int fd, nstype, res;
    (void)self;

    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "setns(fd, nstype) takes 2 arguments");
        return NULL;
    }
    if (as_int(args[0], &fd) == -1 || as_int(args[1], &nstype) == -1)
        return NULL;
    do {
        res = setns(fd, nstype);
    } while (res == -1 && errno == EINTR);
    if (res == -1)
        return PyErr_SetFromErrno(PyExc_OSError);
    Py_RETURN_NONE;
}

static long kcmp(int pid1, int pid2, int type)
{
    long res;
    do {
        res = syscall(SYS_kcmp, pid1, pid2, type, 0UL, 0UL);
    } while (res == -1 && errno == EINTR);
    return res == -1 ? -errno : res;
}

static PyObject *check_and_return(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    int pid, tid, dirfd, anchor_fd, flags, check_fs, res;
    long k;
    PyObject *names, *expected;
    Py_ssize_t count;
    (void)self;

    if (nargs != 8) {
        PyErr_SetString(PyExc_TypeError,
                        "check_and_return(pid, tid, check_fs, dirfd, names, expected, "
                        "anchor_fd, flags) takes 8 arguments");
        return NULL;
    }
    if (as_int(args[0], &pid) == -1 || as_int(args[1], &tid) == -1)
        return NULL;
    if ((check_fs = PyObject_IsTrue(args[2])) == -1)
        return NULL;
    if (as_int(args[3], &dirfd) == -1 || check_names(names = args[4]) == -1)
        return NULL;
    expected = args[5];
    if (!PyTuple_CheckExact(expected) ||
        PyTuple_GET_SIZE(expected) < (count = PyTuple_GET_SIZE(names))) {
        PyErr_SetString(PyExc_TypeError, "expected must be a tuple of ints, one per name");
        return NULL;
    }
    if (as_int(args[6], &anchor_fd) == -1 || as_int(args[7], &flags) == -1)
        return NULL;

    k = kcmp(pid, tid, KCMP_FILES);
    if (k < 0)
        return PyLong_FromLong(k);
    if (k)
        return PyLong_FromLong(CHECK_FILES_DIFFER);
    if (check_fs) {
        k = kcmp(pid, tid, KCMP_FS);
        if (k < 0)
            return PyLong_FromLong(k);
        if (k)
            return PyLong_FromLong(CHECK_FS_DIFFERS);
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        long long inode = inode_at(dirfd, PyBytes_AS_STRING(PyTuple_GET_ITEM(names, i)));
        unsigned long long want = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(expected, i));
        if (want == (unsigned long long)-1 && PyErr_Occurred())
            return NULL;
        if (inode < 0)
            return PyLong_FromLongLong(inode);
        if ((unsigned long long)inode != want)
            return PyLong_FromSsize_t(CHECK_LINK_MOVED + i);
    }
    if (anchor_fd >= 0) {
        do {
            res = setns(anchor_fd, flags);
        } while (res == -1 && errno == EINTR);
        if (res == -1)
            return PyLong_FromLong(-errno);
    }
    return PyLong_FromLong(CHECK_OK);
}

/* -- the baton ------------------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    /* 1: posted, 0: not. */
    _Atomic uint32_t word;
} Baton;

static void baton_post_raw(Baton *b)
{
    atomic_store_explicit(&b->word, 1, memory_order_release);
    syscall(SYS_futex, &b->word, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
}

static int baton_take(Baton *b)
{
    uint32_t one = 1;
    return atomic_compare_exchange_strong_explicit(&b->word, &one, 0, memory_order_acquire,
                                                   memory_order_relaxed);
}

static double monotonic(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Wait for `b` with the GIL released: 1 taken, 0 timed out, -1 a signal
 * handler raised (the exception is set). timeout < 0: no limit. If `post`
 * is not NULL it is posted first, after the GIL is released. */
static int baton_wait(Baton *b, Baton *post, double timeout)
{
    double deadline = timeout < 0 ? 0 : monotonic() + timeout;
    int got = 0, err = 0;

    for (;;) {
        Py_BEGIN_ALLOW_THREADS
        if (post != NULL) {
            baton_post_raw(post);
            post = NULL;
        }
        for (;;) {
            struct timespec rel, *relp = NULL;
            if (baton_take(b)) {
                got = 1;
                break;
            }
            if (timeout >= 0) {
                double left = deadline - monotonic();
                if (left <= 0)
                    break;
                rel.tv_sec = (time_t)left;
                rel.tv_nsec = (long)((left - (double)rel.tv_sec) * 1e9);
                relp = &rel;
            }
            if (syscall(SYS_futex, &b->word, FUTEX_WAIT_PRIVATE, 0, relp, NULL, 0) == -1 &&
                errno == EINTR) {
                err = EINTR;
                break;
            }
        }
        Py_END_ALLOW_THREADS
        if (got)
            return 1;
        if (err != EINTR)
            return 0;
        err = 0;
        if (PyErr_CheckSignals() == -1)
            return -1;
    }
}

static PyTypeObject BatonType;

static PyObject *baton_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    Baton *b;
    if (PyTuple_GET_SIZE(args) || (kwds != NULL && PyDict_GET_SIZE(kwds))) {
        PyErr_SetString(PyExc_TypeError, "Baton() takes no arguments");
        return NULL;
    }
    b = (Baton *)type->tp_alloc(type, 0);
    if (b != NULL)
        atomic_init(&b->word, 0);
    return (PyObject *)b;
}

static PyObject *baton_post(PyObject *self, PyObject *unused)
{
    (void)unused;
    baton_post_raw((Baton *)self);
    Py_RETURN_NONE;
}

static int as_timeout(PyObject *const *args, Py_ssize_t nargs, Py_ssize_t at, double *out)
{
    *out = -1;
    if (nargs > at) {
        *out = PyFloat_AsDouble(args[at]);
        if (*out == -1 && PyErr_Occurred())
            return -1;
    }
    return 0;
}

static PyObject *baton_wait_method(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    double timeout;
    int got;
    if (nargs > 1) {
        PyErr_SetString(PyExc_TypeError, "wait(timeout=-1) takes at most 1 argument");
        return NULL;
    }
    if (as_timeout(args, nargs, 0, &timeout) == -1)
        return NULL;
    if (baton_take((Baton *)self))
        Py_RETURN_TRUE;
    got = baton_wait((Baton *)self, NULL, timeout);
    if (got == -1)
        return NULL;
    return PyBool_FromLong(got);
}

static PyMethodDef baton_methods[] = {
    {"post", baton_post, METH_NOARGS, "post() -> None: wake the waiter (or the next one)"},
    {"wait", (PyCFunction)(void (*)(void))baton_wait_method, METH_FASTCALL,
     "wait(timeout=-1) -> bool: take the post, waiting with the GIL released"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject BatonType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "nspool._native_ext.Baton",
    .tp_basicsize = sizeof(Baton),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A binary semaphore on a futex: post() and wait(timeout).",
    .tp_new = baton_new,
    .tp_methods = baton_methods,
};

static PyObject *pass_baton(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    double timeout;
    int got;
    (void)self;
    if (nargs < 2 || nargs > 3 || !PyObject_TypeCheck(args[0], &BatonType) ||
        !PyObject_TypeCheck(args[1], &BatonType)) {
        PyErr_SetString(PyExc_TypeError, "pass_baton(to, mine, timeout=-1) takes two Batons");
        return NULL;
    }
    if (as_timeout(args, nargs, 2, &timeout) == -1)
        return NULL;
    got = baton_wait((Baton *)args[1], (Baton *)args[0], timeout);
    if (got == -1)
        return NULL;
    return PyBool_FromLong(got);
}

static PyMethodDef methods[] = {
    {"pass_baton", (PyCFunction)(void (*)(void))pass_baton, METH_FASTCALL,
     "pass_baton(to, mine, timeout=-1) -> bool: release the GIL, post to, wait on mine"},
    {"read_inodes", (PyCFunction)(void (*)(void))read_inodes, METH_FASTCALL,
     "read_inodes(dirfd, names) -> tuple of inode numbers"},
    {"setns", (PyCFunction)(void (*)(void))native_setns, METH_FASTCALL,
     "setns(fd, nstype) -> None"},
    {"check_and_return", (PyCFunction)(void (*)(void))check_and_return, METH_FASTCALL,
     "check_and_return(pid, tid, check_fs, dirfd, names, expected, anchor_fd, flags) -> int"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "nspool._native_ext",
    "nspool's hop primitives, compiled (see nspool._native).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__native_ext(void)
{
    PyObject *m;
    if (PyType_Ready(&BatonType) < 0)
        return NULL;
    m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&BatonType);
    if (PyModule_AddObject(m, "Baton", (PyObject *)&BatonType) < 0) {
        Py_DECREF(&BatonType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
