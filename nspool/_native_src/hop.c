/* nspool._native_ext: the workers' hop primitives, compiled.
 *
 * read_inodes, setns and check_and_return, with the same arguments and
 * results as the pure-Python fallbacks in nspool/_native.py. None of them
 * releases the GIL: each takes microseconds, and on a busy interpreter
 * getting the GIL back after a release can cost a switch interval.
 */
#define PY_SSIZE_T_CLEAN
#define _GNU_SOURCE
#include <Python.h>
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <sys/syscall.h>
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

static PyMethodDef methods[] = {
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
    return PyModule_Create(&module);
}
