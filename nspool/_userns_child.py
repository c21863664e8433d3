"""The user-namespace helper: makes namespaces nested in a user namespace.

Started by :mod:`nspool._userns` as a fresh interpreter (``python -I -S FILE
CONFIG``, never an ``os.fork()`` of the threaded parent). ``CONFIG`` is a
JSON object (see :func:`nspool._userns.make_in_helper`). The helper joins
the base set (``join``: inherited fds and their ``CLONE_NEW*`` types), makes
the namespaces, and answers on stdout, one line a step::

    U            user namespace made: the parent writes the maps, then
                 sends one byte on stdin (end of file: exit 0)
    R INIT_PID   done (INIT_PID 0 without a pid namespace)
    E ERRNO SYSCALL KINDS [PATH]   a step failed; the helper exits 1

Then it waits until its stdin closes. With a pid namespace its forked child
is the namespace's init, which exits when the helper does: it waits on a
pipe only the helper holds (its stdin). That child executes the compiled
init named by ``init`` (the program, opened before any mount could hide
it), or where none was built runs the code of the pid init,
:func:`nspool._pidinit_child.be_init`, imported from this file's directory:
the only module it imports besides the standard library (and only for a
pid namespace without a compiled init).

Wrong arguments: a usage line on stderr, status 2.
"""

import ctypes
import json
import os
import sys

# Names for the type checker only (annotations are strings: typing is not
# imported at run time).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, NoReturn

_USAGE = (
    "usage: _userns_child.py CONFIG_JSON\n"
    "(a child program of nspool, started by it; not for direct use)"
)
# The keys of CONFIG, by the type of their values.
_KEYS: "dict[str, type | tuple[type, ...]]" = {
    **dict.fromkeys(("user", "first", "mnt", "uts", "time", "pid"), int),  # CLONE_NEW* bits
    **dict.fromkeys(("propagation", "tmp_flags", "proc", "tmp"), int),  # mount flags, a bool
    **dict.fromkeys(("tmp_data", "offsets", "init"), str),
    **dict.fromkeys(("hostname", "domainname"), (str, type(None))),
    "join": list,
}


def _init_code() -> "Callable[[int, int | None, int | None], int]":
    """The pid init's :func:`~nspool._pidinit_child.be_init`, imported from
    this file's directory (``-I`` leaves it off ``sys.path``; appended, so
    that the standard library comes first)."""
    if TYPE_CHECKING:
        from nspool._pidinit_child import be_init
    else:
        sys.path.append(os.path.dirname(os.path.abspath(__file__)))
        from _pidinit_child import be_init
    return be_init


# -- the helper -------------------------------------------------------------------


def _say(line: str) -> None:
    os.write(1, (line + "\n").encode())


def _fail(code: int, syscall: str, detail: int | str) -> "NoReturn":
    _say(f"E {code} {syscall} {detail}")
    os._exit(1)


def _check(rc: int, syscall: str, detail: int | str) -> None:
    if rc == -1:
        _fail(ctypes.get_errno(), syscall, detail)


def _helper(cfg: "dict[str, Any]") -> int:
    # The init's code is loaded first, while this file's directory is still
    # in view: a private /tmp mounted below hides it if nspool lives there.
    init_fd = os.open(cfg["init"], os.O_RDONLY | os.O_CLOEXEC) if cfg["pid"] and cfg["init"] else -1
    be_init = _init_code() if cfg["pid"] and init_fd < 0 else None
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = (ctypes.c_char_p,) * 3 + (ctypes.c_ulong, ctypes.c_char_p)
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
            if be_init is not None:
                os._exit(be_init(life_r, ready_w, cfg["proc"] or None))
            _exec_init(init_fd, life_r, ready_w, cfg["proc"])
        os.close(life_r)
        os.close(ready_w)
        answer = os.read(ready_r, 64)
        if answer[:1] == b"X":
            _fail(int(answer[1:]) if answer[1:].isdigit() else 5, "execve", cfg["init"])
        if answer != b"ok" and not (answer == b"" and be_init is None and not cfg["proc"]):
            _fail(int(answer) if answer.isdigit() else 5, "mount", f"{cfg['pid']} /proc")
    _say(f"R {init}")
    while os.read(0, 64):
        pass
    return 0


def _exec_init(init_fd: int, life: int, ready: int, proc: int) -> "NoReturn":
    """In the init's process: become the compiled init, whose stdin is
    ``life`` and, to mount a ``/proc`` first (``proc``: its flags), whose
    stdout is ``ready`` for the answer. Without ``/proc`` it answers
    nothing: ``ready`` (close-on-exec) just closes when the program starts.
    A failed ``execve`` answers ``X`` and its errno."""
    try:
        os.dup2(life, 0)
        if proc:
            os.dup2(ready, 1)
        else:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
        os.execve(init_fd, ["nspool-pidinit", str(proc) if proc else "-"], {})
    except OSError as exc:
        os.write(ready, b"X%d" % (exc.errno or 5))
    os._exit(127)


def _config(text: str) -> "dict[str, Any] | None":
    """CONFIG, or None if it is not one."""
    try:
        cfg = json.loads(text)
    except ValueError:
        return None
    good = (
        isinstance(cfg, dict)
        and all(isinstance(cfg.get(k, ...), t) for k, t in _KEYS.items())
        and all(
            isinstance(pair, list) and len(pair) == 2 and all(isinstance(v, int) for v in pair)
            for pair in cfg["join"]
        )
    )
    return cfg if good else None


def main(argv: list[str]) -> int:
    cfg = _config(argv[0]) if len(argv) == 1 else None
    if cfg is None:
        print(_USAGE, file=sys.stderr)
        return 2
    return _helper(cfg)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
