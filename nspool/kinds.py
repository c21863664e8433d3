"""Namespace kinds: ``Kind``, their names and their ``CLONE_NEW*`` values.

``Kind`` is an :class:`enum.IntFlag`, so a set of kinds is one value
(``Kind.NET | Kind.UTS``) that can be passed straight to ``unshare`` or
``setns``. Names are those of ``/proc/PID/ns``.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator

from .errors import KindError, KindTypeError

__all__ = ["ALL_KINDS", "NO_KINDS", "SETNS_ORDER", "Kind"]


class Kind(enum.IntFlag):
    """A namespace kind, or a set of kinds combined with ``|``.

    Values are the kernel's ``CLONE_NEW*`` flags; ``str()`` gives the
    ``/proc/PID/ns`` names joined with commas (``"net,uts"``), and
    :meth:`parse` reads that form back.
    """

    CGROUP = 0x02000000
    IPC = 0x08000000
    MNT = 0x00020000
    NET = 0x40000000
    PID = 0x20000000
    TIME = 0x00000080
    USER = 0x10000000
    UTS = 0x04000000

    @classmethod
    def all(cls) -> Kind:
        """Every kind."""
        return _ALL

    @classmethod
    def parse(cls, value: str | int | Kind | Iterable[str | Kind]) -> Kind:
        """Turn ``"net,uts"``, ``"net"``, ``["net", "uts"]``, an int of
        ``CLONE_NEW*`` bits, or a ``Kind`` into a ``Kind``.

        Names are case-insensitive and may be separated by commas, ``|`` or
        spaces; ``"mount"`` is accepted for ``mnt``. Raises :class:`KindError`
        for an unknown name or bits that are not namespace flags. An empty
        result is allowed here; :meth:`require` refuses it.
        """
        if isinstance(value, Kind):
            flags = int(value)
        elif isinstance(value, bool):
            raise KindError(22, syscall="Kind.parse", detail=f"not a kind: {value!r}")
        elif isinstance(value, int):
            flags = value
        elif isinstance(value, str):
            flags = 0
            for word in value.replace("|", ",").replace(" ", ",").split(","):
                if word:
                    flags |= int(cls._from_name(word))
        elif isinstance(value, Iterable) and not isinstance(value, (bytes, bytearray)):
            flags = 0
            for item in value:
                flags |= int(cls.parse(item))
        else:
            raise KindTypeError(
                22,
                syscall="Kind.parse",
                detail=f"not a kind: {value!r} ({type(value).__name__}); give a Kind, "
                'a name such as "net,uts", an int of CLONE_NEW* bits, or names',
            )
        stray = flags & ~int(_ALL)
        if stray:
            raise KindError(
                22, syscall="Kind.parse", detail=f"{stray:#x} is not a namespace flag in {value!r}"
            )
        return cls(flags)

    @classmethod
    def require(cls, value: str | int | Kind | Iterable[str | Kind], *, what: str) -> Kind:
        """:meth:`parse` ``value`` and refuse an empty kind set; ``what`` names
        the caller in the error."""
        kinds = cls.parse(value)
        if not kinds:
            raise KindError(22, syscall=what, detail="no namespace kind given")
        return kinds

    @classmethod
    def from_nstype(cls, nstype: int) -> Kind:
        """The single kind for an ``NS_GET_NSTYPE`` result."""
        try:
            return _SINGLE[nstype]
        except KeyError:
            raise KindError(
                22, syscall="NS_GET_NSTYPE", detail=f"unknown namespace type {nstype:#x}"
            ) from None

    @classmethod
    def _from_name(cls, word: str) -> Kind:
        key = word.strip().lower()
        key = _ALIASES.get(key, key)
        for kind in _SINGLE.values():
            if kind.proc_name == key:
                return kind
        known = ", ".join(k.proc_name for k in _SINGLE.values())
        raise KindError(
            22, syscall="Kind.parse", detail=f"unknown namespace kind {word!r} (known: {known})"
        )

    @property
    def proc_name(self) -> str:
        """The name of this single kind under ``/proc/PID/ns`` (``"net"``)."""
        name = self.name
        if name is None or self not in _SINGLE.values():
            raise KindError(22, syscall="Kind.proc_name", detail=f"{self!r} is not a single kind")
        return name.lower()

    @property
    def for_children_name(self) -> str:
        """The ``/proc/thread-self/ns`` link that says where this kind is for
        what the thread does next: ``pid_for_children`` and
        ``time_for_children`` for pid and time (``setns``/``unshare`` move only
        a thread's future children there), the plain name for the others."""
        name = self.proc_name
        return f"{name}_for_children" if self in (Kind.PID, Kind.TIME) else name

    def singles(self) -> Iterator[Kind]:
        """The single kinds in this set, in :data:`SETNS_ORDER`."""
        return (k for k in SETNS_ORDER if k & self)

    def __str__(self) -> str:
        return ",".join(k.proc_name for k in self.singles()) or "none"


_SINGLE: dict[int, Kind] = {int(k): k for k in Kind.__members__.values()}
_ALL = Kind(sum(_SINGLE))
#: Every kind, and none: module constants usable as argument defaults.
ALL_KINDS = _ALL
NO_KINDS = Kind(0)
#: What the API takes where it wants kinds: a ``Kind``, its int, ``"net,uts"``,
#: or an iterable of names or kinds (see :meth:`Kind.require`).
KindsArg = Kind | int | str | Iterable[str | Kind]

_ALIASES = {"mount": "mnt", "network": "net", "cgroups": "cgroup"}

#: The order in which a thread enters the kinds of a set. The user namespace
#: comes first (it grants the rights over the others); pid and time next (they
#: only set what the thread's children will be in); mnt last, because after it
#: the thread's view of ``/proc`` and of paths changes; the rest in between.
SETNS_ORDER: tuple[Kind, ...] = (
    Kind.USER,
    Kind.PID,
    Kind.TIME,
    Kind.UTS,
    Kind.IPC,
    Kind.NET,
    Kind.CGROUP,
    Kind.MNT,
)
