"""The process-scoped options of a new set, checked once and applied where
the set is made.

``NamespaceSet.unshare`` (and ``Pool``) take keyword options for what a new
namespace holds besides itself: the id maps of a user namespace, a private
``/tmp`` or ``/proc`` in a mount namespace, the names of a uts namespace,
the clock offsets of a time namespace. Each needs its namespace to be new in
the same call; asking for one without it is a :class:`KindError`, raised
before anything is made.

The options are applied by whatever makes the namespaces: a throwaway
thread of this process (:meth:`SetOptions.apply_on_thread`), or a helper
process for sets that hold a user namespace (``nspool._userns``), which
receives them as :meth:`SetOptions.for_helper`.
"""

from __future__ import annotations

import dataclasses
import errno
import itertools
import math
import os
import socket
from collections.abc import Iterable, Mapping
from typing import Any, TypedDict

from . import _sys
from .errors import InvalidArgumentError, InvalidArgumentTypeError, KindError, from_errno
from .kinds import Kind

__all__ = [
    "CLOCKS",
    "HOST_NAME_MAX",
    "MAX_MAP_LINES",
    "IdMap",
    "SetOptions",
    "UnshareOptions",
]

#: One line of a uid or gid map: (first id inside, first id outside, count).
IdMap = tuple[int, int, int]

#: The kernel's limit on lines in a uid or gid map (since Linux 4.15).
MAX_MAP_LINES = 340
#: The longest host or domain name the kernel takes, in bytes.
HOST_NAME_MAX = 64
#: The clocks a time namespace can offset, by the names its offsets file takes.
CLOCKS = ("monotonic", "boottime")
#: The largest clock offset, in seconds, the kernel takes (``KTIME_SEC_MAX / 2``).
MAX_CLOCK_OFFSET = (2**63 - 1) // 10**9 // 2


def _bad_value(option: str, detail: str, *, kind: Kind) -> InvalidArgumentError:
    return InvalidArgumentError(
        errno.EINVAL, syscall="unshare", kind=kind, detail=f"{option}: {detail}"
    )


def _bad_type(option: str, value: object, want: str, *, kind: Kind) -> InvalidArgumentTypeError:
    return InvalidArgumentTypeError(
        errno.EINVAL,
        syscall="unshare",
        kind=kind,
        detail=f"{option} must be {want}, not {type(value).__name__} {value!r}",
    )


# Mount flags for the private file systems (<sys/mount.h>).
_MS_NOSUID = 0x2
_MS_NODEV = 0x4
_MS_NOEXEC = 0x8
TMP_FLAGS = _MS_NOSUID | _MS_NODEV
TMP_DATA = "mode=1777"
PROC_FLAGS = _MS_NOSUID | _MS_NODEV | _MS_NOEXEC


class UnshareOptions(TypedDict, total=False):
    """The keyword options of ``NamespaceSet.unshare`` and ``Pool``; see
    :meth:`SetOptions.make`."""

    uid_map: Iterable[IdMap] | None
    gid_map: Iterable[IdMap] | None
    private_tmp: bool
    private_proc: bool
    hostname: str | None
    domainname: str | None
    clock_offsets: Mapping[str, float] | None


@dataclasses.dataclass(frozen=True)
class SetOptions:
    """What a new set holds besides its namespaces. Made by :meth:`make`,
    which checks every value and that its kind is among the new kinds."""

    uid_map: tuple[IdMap, ...] = ()
    gid_map: tuple[IdMap, ...] = ()
    private_tmp: bool = False
    private_proc: bool = False
    hostname: str | None = None
    domainname: str | None = None
    clock_offsets: tuple[tuple[str, float], ...] = ()

    @classmethod
    def make(
        cls,
        kinds: Kind,
        *,
        uid_map: Iterable[IdMap] | None = None,
        gid_map: Iterable[IdMap] | None = None,
        private_tmp: bool = False,
        private_proc: bool = False,
        hostname: str | None = None,
        domainname: str | None = None,
        clock_offsets: Mapping[str, float] | None = None,
    ) -> SetOptions:
        """Check the options against ``kinds``, the kinds the call creates.

        A new user namespace without maps maps root inside to the caller's
        effective uid and gid (as ``unshare --map-root-user``); pass empty
        maps to leave every id unmapped. Raises :class:`KindError` for an
        option whose kind is not being created, ``ValueError`` for a bad
        value; nothing has been made at that point.
        """

        def need(kind: Kind, option: str) -> None:
            if not kinds & kind:
                raise KindError(
                    errno.EINVAL,
                    syscall="unshare",
                    kind=kind,
                    detail=f"{option} needs a new {kind} namespace in the same call",
                )

        for option, flag in (("private_tmp", private_tmp), ("private_proc", private_proc)):
            if not isinstance(flag, bool):
                raise _bad_type(option, flag, "a bool", kind=Kind.MNT)
        if uid_map is not None or gid_map is not None:
            need(Kind.USER, "uid_map/gid_map")
        if kinds & Kind.USER:
            uids = _check_map("uid_map", uid_map, default=os.geteuid())
            gids = _check_map("gid_map", gid_map, default=os.getegid())
        else:
            uids = gids = ()
        if private_tmp:
            need(Kind.MNT, "private_tmp")
        if private_proc:
            need(Kind.PID, "private_proc")
            need(Kind.MNT, "private_proc")
        for option, name in (("hostname", hostname), ("domainname", domainname)):
            if name is not None:
                if not isinstance(name, str):
                    raise _bad_type(option, name, "a str", kind=Kind.UTS)
                need(Kind.UTS, option)
                if "\0" in name:
                    raise _bad_value(option, f"contains a NUL: {name!r}", kind=Kind.UTS)
                if len(os.fsencode(name)) > HOST_NAME_MAX:
                    raise _bad_value(
                        option, f"longer than {HOST_NAME_MAX} bytes: {name!r}", kind=Kind.UTS
                    )
        offsets: tuple[tuple[str, float], ...] = ()
        if clock_offsets is not None and not isinstance(clock_offsets, Mapping):
            raise _bad_type(
                "clock_offsets", clock_offsets, 'a mapping such as {"monotonic": 5}', kind=Kind.TIME
            )
        if clock_offsets:
            need(Kind.TIME, "clock_offsets")
            for clock, seconds in clock_offsets.items():
                if clock not in CLOCKS:
                    raise _bad_value(
                        "clock_offsets", f"no clock {clock!r}; one of {CLOCKS}", kind=Kind.TIME
                    )
                if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
                    raise _bad_type(
                        f"clock_offsets[{clock!r}]", seconds, "a number of seconds", kind=Kind.TIME
                    )
                if not math.isfinite(seconds) or abs(seconds) > MAX_CLOCK_OFFSET:
                    raise _bad_value(
                        "clock_offsets",
                        f"{clock} offset must be finite and within "
                        f"+-{MAX_CLOCK_OFFSET} s, not {seconds!r}",
                        kind=Kind.TIME,
                    )
            offsets = tuple(sorted((c, float(s)) for c, s in clock_offsets.items()))
        return cls(
            uid_map=uids,
            gid_map=gids,
            private_tmp=private_tmp,
            private_proc=private_proc,
            hostname=hostname,
            domainname=domainname,
            clock_offsets=offsets,
        )

    # -- on a thread of this process -----------------------------------------------

    def apply_on_thread(self, kinds: Kind) -> None:
        """On the thread that has just unshared ``kinds`` (all but pid and
        time): mount the private ``/tmp`` and set the names. Raises
        :class:`NamespaceError` naming the syscall."""
        if self.private_tmp:
            _sys.mount("tmpfs", "/tmp", "tmpfs", TMP_FLAGS, TMP_DATA, kind=Kind.MNT)
        if self.hostname is not None:
            try:
                socket.sethostname(self.hostname)
            except OSError as exc:
                raise from_errno(
                    exc.errno or errno.EIO, syscall="sethostname", kind=Kind.UTS
                ) from exc
        if self.domainname is not None:
            _sys.setdomainname(self.domainname)

    def write_clock_offsets(self, tid: int) -> None:
        """Write the clock offsets to the ``timens_offsets`` file of task
        ``tid`` (through the host's ``/proc``), whose ``time_for_children``
        is the new time namespace, before any process has entered it."""
        if not self.clock_offsets:
            return
        _sys.write_proc(
            f"{tid}/timens_offsets",
            offsets_text(self.clock_offsets),
            kind=Kind.TIME,
            pid=tid,
            dir_fd=_sys.HOST_PROC,
        )

    # -- for a helper process ------------------------------------------------------

    def for_helper(self) -> dict[str, Any]:
        """The options as the helper process script takes them (JSON)."""
        return {
            "tmp": self.private_tmp,
            "proc": self.private_proc,
            "hostname": self.hostname,
            "domainname": self.domainname,
            "offsets": offsets_text(self.clock_offsets) if self.clock_offsets else "",
        }


def _check_map(name: str, entries: Iterable[IdMap] | None, *, default: int) -> tuple[IdMap, ...]:
    """A map's lines, checked: three non-negative ints each, a positive
    count, no two ranges overlapping inside or outside, at most
    :data:`MAX_MAP_LINES` lines (the kernel refuses all of those too, but
    with a bare ``EINVAL``)."""
    if entries is None:
        return ((0, default, 1),)
    raw: object = entries
    if isinstance(raw, (str, bytes)) or not isinstance(raw, Iterable):
        raise _bad_type(name, raw, "lines (inside, outside, count)", kind=Kind.USER)
    lines: list[IdMap] = []
    for entry in entries:
        try:
            values = tuple(entry)
        except TypeError:
            values = ()
        if len(values) != 3 or any(isinstance(v, bool) or not isinstance(v, int) for v in values):
            # A ValueError, as before: the map's type is right, a line is not.
            raise _bad_value(
                name,
                f"each entry is (inside, outside, count), three ints, not {entry!r}",
                kind=Kind.USER,
            )
        inside, outside, count = values
        if inside < 0 or outside < 0 or count < 1 or max(inside, outside) + count > 2**32 - 1:
            raise _bad_value(
                name, f"ids must be >= 0 with count >= 1, not {entry!r}", kind=Kind.USER
            )
        lines.append((inside, outside, count))
    if len(lines) > MAX_MAP_LINES:
        raise _bad_value(name, f"at most {MAX_MAP_LINES} lines, not {len(lines)}", kind=Kind.USER)
    for side, label in ((0, "inside"), (1, "outside")):
        ordered = sorted(lines, key=lambda line: line[side])
        for before, after in itertools.pairwise(ordered):
            if before[side] + before[2] > after[side]:
                raise _bad_value(
                    name, f"ranges {before} and {after} overlap {label}", kind=Kind.USER
                )
    return tuple(lines)


def map_text(lines: Iterable[IdMap]) -> str:
    """A map as ``/proc/PID/uid_map`` takes it: one write of all lines."""
    return "".join(f"{inside} {outside} {count}\n" for inside, outside, count in lines)


def offsets_text(offsets: Iterable[tuple[str, float]]) -> str:
    """Clock offsets as ``/proc/PID/timens_offsets`` takes them."""
    out = []
    for clock, seconds in offsets:
        whole = math.floor(seconds)
        nanos = min(999_999_999, round((seconds - whole) * 1e9))
        out.append(f"{clock} {whole} {nanos}\n")
    return "".join(out)
