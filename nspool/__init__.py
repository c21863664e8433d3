"""nspool: run Python callables inside Linux namespaces.

The public surface is re-exported here; the implementation lives in the
submodules (``kinds``, ``_sys``, ``errors``, ``nsset``), whose dependencies
point one way, top to bottom.
"""

from .errors import (
    KindError,
    KindMismatchError,
    NamespaceError,
    NamespaceExistsError,
    NamespaceNotFoundError,
    NamespacePermissionError,
    NotANamespaceError,
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
    "Kind",
    "KindError",
    "KindMismatchError",
    "NamespaceError",
    "NamespaceExistsError",
    "NamespaceNotFoundError",
    "NamespacePermissionError",
    "NamespaceSet",
    "NotANamespaceError",
    "Pool",
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
