"""The child programs that hold namespaces for nspool: the init of a pid
namespace, and the helper that makes namespaces nested in a user namespace.
One file with two modes, because the helper forks an init of its own and
both inits are the same code (:func:`_be_init`, with its reap handler).

Started as a fresh interpreter, ``python -I -S FILE MODE ARG`` (never an
``os.fork()`` of the threaded parent): ``init`` by :mod:`nspool._pidinit`,
``helper`` by :mod:`nspool._userns`. It imports only the standard library,
and ``ctypes`` and ``json`` only where they are needed, so that an init
starts in milliseconds.

``init [PROC_FLAGS]``
    PID 1 of a fresh pid namespace: it reaps every child reparented to it,
    ignores ``SIGINT``, and exits when its stdin closes, i.e. when the set
    releases it or the parent dies. Its exit makes the kernel kill
    everything else in the namespace. With ``PROC_FLAGS`` it first mounts a
    ``/proc`` of its namespace on ``/proc`` with those mount flags (a
    private ``/proc`` must be mounted from inside the pid namespace) and
    answers on stdout: ``ok``, or the errno of the mount, and then exits 1.

``helper CONFIG``
    ``CONFIG`` is a JSON object (see :func:`nspool._userns.make_in_helper`).
    The helper joins the base set (``join``: fds and their ``CLONE_NEW*``
    types), makes the namespaces, and answers on stdout, one line a step::

        U            user namespace made: the parent writes the maps, then
                     sends one byte on stdin (end of file: exit 0)
        R INIT_PID   done (INIT_PID 0 without a pid namespace)
        E ERRNO SYSCALL KINDS [PATH]   a step failed; the helper exits 1

    Then it waits until its stdin closes. With a pid namespace its forked
    child is the namespace's init, which exits when the helper does: it
    waits on a pipe only the helper holds.

Wrong arguments: a one-line message on stderr, exit status 2.
"""

import os
import signal
import sys

# Names for the type checker only (annotations are strings: no import of
# typing or ctypes at run time unless needed).
TYPE_CHECKING = False
if TYPE_CHECKING:
    import ctypes
    from typing import Any, NoReturn

_USAGE = (
    "usage: _ns_child.py init [PROC_FLAGS] | helper CONFIG_JSON\n"
    "(a child program of nspool, started by it; not for direct use)"
)
# The keys of a helper's CONFIG, by the type of their values: CLONE_NEW*
# bits, mount flags and a bool (ints), strs, and strs or None.
_BITS_KEYS = ("user", "first", "mnt", "uts", "time", "pid")
_INT_KEYS = (*_BITS_KEYS, "propagation", "tmp_flags", "proc", "tmp")
_STR_KEYS = ("tmp_data", "offsets")
_NAME_KEYS = ("hostname", "domainname")

_libc: "ctypes.CDLL | None" = None


def _open_libc() -> "ctypes.CDLL":
    global _libc
    if _libc is None:
        import ctypes

        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.mount.argtypes = (ctypes.c_char_p,) * 3 + (ctypes.c_ulong, ctypes.c_char_p)
    return _libc


def _errno() -> int:
    import ctypes

    return ctypes.get_errno()


# -- the init ----------------------------------------------------------------------


def _reap(_signum: int, _frame: object) -> None:
    """SIGCHLD: reap every finished child."""
    try:
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
    except ChildProcessError:
        pass


def _be_init(life: int, ready: int | None, proc_flags: int | None) -> int:
    """Be PID 1 until ``life`` reads end of file; the exit status.

    ``proc_flags``: first mount ``/proc`` with them. ``ready``: an fd to
    answer on, ``ok`` or the mount's errno, then closed."""
    signal.signal(signal.SIGCHLD, _reap)
    failed = (
        proc_flags is not None
        and _open_libc().mount(b"proc", b"/proc", b"proc", proc_flags, None) == -1
    )
    if ready is not None:
        os.write(ready, str(_errno()).encode() if failed else b"ok")
        os.close(ready)
    if failed:
        return 1
    while os.read(life, 64):
        pass
    return 0


def _init(proc_flags: int | None) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    return _be_init(0, None if proc_flags is None else 1, proc_flags)


# -- the user-namespace helper -------------------------------------------------------


def _say(line: str) -> None:
    os.write(1, (line + "\n").encode())


def _fail(code: int, syscall: str, detail: int | str) -> "NoReturn":
    _say(f"E {code} {syscall} {detail}")
    os._exit(1)


def _check(rc: int, syscall: str, detail: int | str) -> None:
    if rc == -1:
        _fail(_errno(), syscall, detail)


def _helper(cfg: "dict[str, Any]") -> int:
    libc = _open_libc()
    for fd, nstype in cfg["join"]:
        _check(libc.setns(fd, nstype), "setns", nstype)
        os.close(fd)
    if cfg["user"]:
        _check(libc.unshare(cfg["user"]), "unshare", cfg["user"])
        _say("U")
        if not os.read(0, 1):
            os._exit(0)
    if cfg["first"]:
        _check(libc.unshare(cfg["first"]), "unshare", cfg["first"])
    if cfg["mnt"]:
        rc = libc.mount(None, b"/", None, cfg["propagation"], None)
        _check(rc, "mount", f"{cfg['mnt']} /")
    if cfg["tmp"]:
        data = cfg["tmp_data"].encode()
        rc = libc.mount(b"tmpfs", b"/tmp", b"tmpfs", cfg["tmp_flags"], data)
        _check(rc, "mount", f"{cfg['mnt']} /tmp")
    for call, name in (("sethostname", cfg["hostname"]), ("setdomainname", cfg["domainname"])):
        if name is not None:
            raw = name.encode()
            _check(getattr(libc, call)(raw, len(raw)), call, cfg["uts"])
    if cfg["time"]:
        _check(libc.unshare(cfg["time"]), "unshare", cfg["time"])
        if cfg["offsets"]:
            try:
                with open("/proc/self/timens_offsets", "w") as f:
                    f.write(cfg["offsets"])
            except OSError as exc:
                _fail(exc.errno or 5, "write", f"{cfg['time']} /proc/self/timens_offsets")
    init = 0
    if cfg["pid"]:
        _check(libc.unshare(cfg["pid"]), "unshare", cfg["pid"])
        life_r, life_w = os.pipe()
        ready_r, ready_w = os.pipe()
        init = os.fork()
        if init == 0:
            os.close(life_w)
            os.close(ready_r)
            os._exit(_be_init(life_r, ready_w, cfg["proc"] or None))
        os.close(life_r)
        os.close(ready_w)
        answer = os.read(ready_r, 64)
        if answer != b"ok":
            _fail(int(answer) if answer.isdigit() else 5, "mount", f"{cfg['pid']} /proc")
    _say(f"R {init}")
    while os.read(0, 64):
        pass
    return 0


def _config(text: str) -> "dict[str, Any] | None":
    """The helper's CONFIG, or None if it is not one."""
    import json

    try:
        cfg = json.loads(text)
    except ValueError:
        return None
    if not isinstance(cfg, dict):
        return None
    join = cfg.get("join")
    good = (
        isinstance(join, list)
        and all(
            isinstance(pair, list) and len(pair) == 2 and all(isinstance(v, int) for v in pair)
            for pair in join
        )
        and all(isinstance(cfg.get(k), int) for k in _INT_KEYS)
        and all(isinstance(cfg.get(k), str) for k in _STR_KEYS)
        and all(k in cfg and (cfg[k] is None or isinstance(cfg[k], str)) for k in _NAME_KEYS)
    )
    return cfg if good else None


def main(argv: list[str]) -> int:
    mode, args = (argv[0], argv[1:]) if argv else ("", [])
    if mode == "init" and len(args) <= 1:
        try:
            proc_flags = int(args[0]) if args else None
        except ValueError:
            pass
        else:
            return _init(proc_flags)
    elif mode == "helper" and len(args) == 1:
        cfg = _config(args[0])
        if cfg is not None:
            return _helper(cfg)
    print(_USAGE, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
