"""nspool: run Python callables inside Linux namespaces.

The public surface is re-exported here; the implementation lives in the
submodules, whose dependencies point one way, top to bottom: ``errors``,
``kinds``, ``_sys`` (the syscalls), ``_options`` and ``_userns`` (what a new
set holds; sets made in a helper process), ``nsset`` (``NamespaceSet``),
``workers``, ``_wait``, ``_sockets`` and ``_process`` (the async front end),
``net``, ``pool``, ``rootless``, then ``demo`` and ``cli``.
"""

from .errors import (
    InvalidArgumentError,
    InvalidArgumentTypeError,
    InvalidNetnsNameError,
    KindError,
    KindMismatchError,
    KindTypeError,
    NamespaceError,
    NamespaceExistsError,
    NamespaceNotFoundError,
    NamespacePermissionError,
    NotANamespaceError,
    PidNamespaceEndedError,
    PoolClosedError,
    ProcessNotFoundError,
    SetClosedError,
    UnsupportedKindError,
)
from .kinds import Kind
from .nsset import NamespaceSet, current
from .pool import Pool, PoolStats
from .rootless import enter_user_namespace
from .workers import Workers, WorkersStats, default_workers

__all__ = [
    "InvalidArgumentError",
    "InvalidArgumentTypeError",
    "InvalidNetnsNameError",
    "Kind",
    "KindError",
    "KindMismatchError",
    "KindTypeError",
    "NamespaceError",
    "NamespaceExistsError",
    "NamespaceNotFoundError",
    "NamespacePermissionError",
    "NamespaceSet",
    "NotANamespaceError",
    "PidNamespaceEndedError",
    "Pool",
    "PoolClosedError",
    "PoolStats",
    "ProcessNotFoundError",
    "SetClosedError",
    "UnsupportedKindError",
    "Workers",
    "WorkersStats",
    "current",
    "default_workers",
    "enter_user_namespace",
]
