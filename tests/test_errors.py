"""The error tree: one root, builtin bases, messages that say where."""

from __future__ import annotations

import errno
import pickle

import pytest

import nspool
from nspool import errors


def test_every_error_is_a_namespace_error_and_an_oserror() -> None:
    """Every exported error derives from NamespaceError, itself an OSError."""
    classes = [getattr(nspool, n) for n in nspool.__all__ if n.endswith("Error")]
    assert classes
    for cls in classes:
        assert issubclass(cls, nspool.NamespaceError)
        assert issubclass(cls, OSError)


@pytest.mark.parametrize(
    ("cls", "builtin"),
    [
        (nspool.NamespaceNotFoundError, FileNotFoundError),
        (nspool.NamespaceExistsError, FileExistsError),
        (nspool.NamespacePermissionError, PermissionError),
        (nspool.ProcessNotFoundError, ProcessLookupError),
        (nspool.KindError, ValueError),
    ],
)
def test_subclasses_match_builtins(cls: type, builtin: type) -> None:
    """Code catching the builtin catches the nspool error."""
    assert issubclass(cls, builtin)


@pytest.mark.parametrize(
    ("err", "cls"),
    [
        (errno.ENOENT, nspool.NamespaceNotFoundError),
        (errno.EEXIST, nspool.NamespaceExistsError),
        (errno.EPERM, nspool.NamespacePermissionError),
        (errno.EACCES, nspool.NamespacePermissionError),
        (errno.ESRCH, nspool.ProcessNotFoundError),
        (errno.ENOTTY, nspool.NotANamespaceError),
        (errno.EINVAL, nspool.NamespaceError),
    ],
)
def test_from_errno_picks_the_subclass(err: int, cls: type) -> None:
    """from_errno chooses the subclass by errno."""
    exc = errors.from_errno(err, syscall="setns", kind=nspool.Kind.NET, path="/x")
    assert type(exc) is cls
    assert exc.errno == err


def test_message_names_syscall_kind_path_and_pid() -> None:
    """The message carries the syscall, the kind, the path and the pid."""
    exc = errors.from_errno(
        errno.EPERM, syscall="setns", kind=nspool.Kind.NET, path="/run/netns/blue", pid=42
    )
    text = str(exc)
    assert text.startswith("setns(net, /run/netns/blue, pid 42): [Errno 1]")
    assert exc.filename == "/run/netns/blue"
    assert (exc.syscall, exc.kind, exc.path, exc.pid) == ("setns", "net", "/run/netns/blue", 42)


def test_errors_pickle_with_their_context() -> None:
    """Errors cross process boundaries intact."""
    exc = errors.from_errno(errno.ESRCH, syscall="pidfd_open", pid=7, detail="gone")
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is nspool.ProcessNotFoundError
    assert str(back) == str(exc)
