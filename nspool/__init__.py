"""nspool: run Python callables inside Linux namespaces.

The public surface is re-exported here; the implementation lives in the
submodules, read top-down from the bottom layer.

Layers, bottom to top. A module imports only modules listed before it (on
an earlier line, or earlier on its own line); ``tests/test_layers.py`` reads
every import, lazy and ``TYPE_CHECKING`` ones included, and fails on one
that points up. Child programs (``*_child``) import nothing of nspool.

- primitives, and which path they take (compiled helper or pure Python):
  ``errors``, ``kinds``, ``_sys``, ``_native``
- a set's fds, a thread's own namespaces: ``_handle``, ``_thread_ns``
- what a new set holds; the child programs: ``_options``, ``_creator_child``,
  ``_pidinit_child``, ``_userns_child``, ``_enter_child``
- sets made in a helper process, rootless mode: ``_userns``, ``rootless``
- creating sets: ``_pidinit``, ``_loopback``, ``_create``, ``_creator_proc``
- persistence, opening what exists: ``_persist``, ``_open``
- workers: ``_home``, ``_handoff``, ``_idle``, ``_scheduler``, ``_position``, ``_worker``,
  ``workers``
- awaiting from an event loop, sockets, processes: ``_wait``, ``_sockets``, ``_process``
- the user's types: ``nsset``, ``net``
- a pool's insides: ``_pool_lease``, ``_pool_state``, ``_pool_book``, ``_pool_creators``,
  ``_pool_closer``
- the pool: ``pool``
- commands and measurement: ``pytest_plugin``, ``_exec``, ``_measure``, ``_demo_request``, ``demo``,
  ``_doctor``, ``cli``, ``__main__``, ``__init__``
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
