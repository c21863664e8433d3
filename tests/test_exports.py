"""The public surface is exactly what we mean to export."""

from __future__ import annotations

import nspool

EXPECTED = {
    "InvalidArgumentError",
    "InvalidArgumentTypeError",
    "KindTypeError",
    "InvalidNetnsNameError",
    "PidNamespaceEndedError",
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
}


def test_all_is_exactly_the_public_surface() -> None:
    """__all__ lists the intended names, each importable from nspool."""
    assert set(nspool.__all__) == EXPECTED
    assert len(nspool.__all__) == len(EXPECTED)
    for name in EXPECTED:
        assert getattr(nspool, name).__module__.startswith("nspool.")


def test_no_other_public_names() -> None:
    """Nothing public leaks into the package namespace besides __all__ and
    the submodules (under pytest, the plugin's entry point imports
    ``nspool.pytest_plugin``, and pytest rewrites the asserts of the whole
    package, adding its "@" helpers)."""
    public = {n for n in vars(nspool) if not n.startswith(("_", "@"))}
    submodules = {
        "errors",
        "kinds",
        "nsset",
        "workers",
        "net",
        "pool",
        "cli",
        "rootless",
        "demo",
        "pytest_plugin",
    }
    assert public - submodules == EXPECTED
