"""What a pool's tenant may leave behind in a set, and the recycle check.

A set handed out by a :class:`~nspool.pool.Pool` is thrown away after use
unless the pool has a ``recycle`` hook. Then the hook resets the returned
set, and the set is offered again only if its state (by default
:func:`net_state` for a netns) equals the state it was first offered with:
a reset that did not hold must never reach the next tenant.

Also the after-create hook a set made in this process gets (``lo`` up, then
the user's hook): :func:`compose_hook`.

Guarantees:

* Every state is read on a worker inside the set, through the host's
  ``/proc`` (a set's private ``/proc`` does not show the worker thread).
* A recycle hook that raises, or a state that differs, is reported to the
  pool as a failure and the set is not reused; nothing here closes a set.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import subprocess
from collections.abc import Callable

from . import _sys
from .errors import NamespaceError
from .kinds import Kind
from .net import loopback_up
from .nsset import NamespaceSet
from .workers import Workers

__all__ = ["Recycler", "compose_hook", "net_state"]

logger = logging.getLogger("nspool")


def net_state() -> tuple[object, ...]:
    """What a tenant may leave behind in the calling thread's netns: links
    (from the netns's own ``/proc/thread-self/net/dev``; ``/sys/class/net``
    shows the mounter's), addresses, routes, and firewall state (iptables
    tables in use; the nftables ruleset where ``nft`` is installed). Compared
    by the pool before it reuses a recycled set. Also every readable
    sysctl under ``/proc/sys/net`` (which shows the reader's netns), so that a
    tenant's ``ip_forward=1`` is not handed to the next."""
    files = []
    for name in ("dev", "if_inet6", "route", "ipv6_route", "fib_trie", "ip_tables_names"):
        # Through the host's /proc: a set's private /proc would not show
        # this thread at thread-self.
        try:
            fd = os.open(
                f"thread-self/net/{name}", os.O_RDONLY | os.O_CLOEXEC, dir_fd=_sys.HOST_PROC
            )
        except FileNotFoundError:
            text = ""
        else:
            with open(fd) as f:
                text = f.read()
        if name == "dev":  # drop the counters, keep the interface names
            text = " ".join(line.split(":")[0].strip() for line in text.splitlines()[2:])
        files.append(text)
    ruleset = ""
    with contextlib.suppress(OSError):
        ruleset = subprocess.run(
            ["nft", "list", "ruleset"], capture_output=True, text=True, timeout=10
        ).stdout
    return (*files, ruleset, _net_sysctls())


def _net_sysctls() -> tuple[tuple[str, str], ...]:
    """``(path, value)`` of every readable file under ``/proc/sys/net``, as
    the calling thread's netns has them (through the host's ``/proc``)."""
    values: list[tuple[str, str]] = []
    top = os.open("sys/net", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=_sys.HOST_PROC)
    try:
        for root, _dirs, names, root_fd in os.fwalk(".", dir_fd=top):
            for name in names:
                try:
                    fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=root_fd)
                except OSError:
                    continue  # write-only (flush) or not ours to read
                try:
                    values.append((f"{root}/{name}", os.read(fd, 4096).decode(errors="replace")))
                except OSError:
                    pass
                finally:
                    os.close(fd)
    finally:
        os.close(top)
    return tuple(sorted(values))


def compose_hook(
    loopback: bool, hook: Callable[[NamespaceSet], object] | None
) -> Callable[[NamespaceSet], object] | None:
    """The hook a set made in this process gets: ``lo`` up first (when
    ``loopback``), then the user's."""
    if not loopback:
        return hook
    if hook is None:
        return lambda _s: loopback_up()

    def both(s: NamespaceSet) -> object:
        loopback_up()
        return hook(s)

    return both


class Recycler:
    """A pool's ``recycle`` hook and the check that its reset held.

    ``verify`` (default for a netns: :func:`net_state`) is run inside a set
    on a worker of ``workers()`` to read its state: once when the set is
    first offered (:meth:`baseline`), and after each reset
    (:meth:`reset_holds`). ``record_failure(exc, what)`` is told of a reset
    that failed or did not hold.
    """

    def __init__(
        self,
        kinds: Kind,
        recycle: Callable[[NamespaceSet], object],
        verify: Callable[[], object] | None,
        *,
        workers: Callable[[], Workers],
        record_failure: Callable[[BaseException, str], None],
    ) -> None:
        self.kinds = kinds
        self.recycle = recycle
        self.verify = verify if verify is not None else (net_state if kinds & Kind.NET else None)
        self._workers = workers
        self._record_failure = record_failure

    def baseline(self, s: NamespaceSet) -> object:
        """The state ``s`` is first offered with (``None``: not checked)."""
        if self.verify is None:
            return None
        return self._workers().run_sync(s, self.verify)

    def reset_holds(self, s: NamespaceSet, baseline: object) -> bool:
        """Run the recycle hook inside ``s`` and check its state against the
        one it was first offered with. A hook that fails or a state that
        differs is counted as a failure."""
        workers = self._workers()
        try:
            workers.run_sync(s, self.recycle, s)
            if self.verify is None or workers.run_sync(s, self.verify) == baseline:
                return True
            raise NamespaceError(
                errno.EBUSY,
                syscall="recycle",
                kind=self.kinds,
                detail="the set's state after recycle differs from its first offer; thrown away",
            )
        except Exception as exc:
            logger.warning("nspool pool: recycling %r failed: %s", s, exc)
            self._record_failure(exc, "recycle: ")
            return False
