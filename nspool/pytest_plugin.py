"""nspool's pytest plugin: a fresh network namespace per test.

Installed with nspool (the ``pytest11`` entry point ``nspool``), it gives:

* ``netns``: a fixture handing the test a fresh network namespace (a
  :class:`~nspool.NamespaceSet` with ``lo`` up), leased from a session-wide
  warm :class:`~nspool.Pool` and thrown away after the test;
* ``anetns``: the same for anyio tests (``@pytest.mark.anyio``), leased
  without blocking the event loop;
* ``@pytest.mark.netns``: runs a whole (sync) test inside a fresh netns, on
  a worker thread that entered it (``s.run_sync(test)``): every socket the
  test opens, every process it starts, is in that netns; the fixtures are
  made outside it, as usual;
* ``nspool_pool``: the session's pool itself (``nspool_workers`` its
  workers).

The pool is made when a test first needs one and closed at the end of the
session (its threads joined, every namespace it holds freed); a session
that uses none of these starts nothing. Its size is the ini option
``nspool_warm`` (default 4). Needs the privileges to make a netns (root, or
``nspool.enter_user_namespace()`` first).
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from .kinds import Kind
from .nsset import NamespaceSet
from .pool import Pool
from .workers import Workers

__all__ = ["MARKER", "anetns", "netns", "nspool_pool", "nspool_workers"]

#: The marker that runs a whole test inside a fresh netns.
MARKER = "netns"
#: The session pool's fixture.
POOL_FIXTURE = "nspool_pool"
#: The session workers' fixture.
WORKERS_FIXTURE = "nspool_workers"
#: Default of the ``nspool_warm`` ini option.
DEFAULT_WARM = 4


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        "nspool_warm",
        help=f"fresh netns nspool's test pool keeps ready (default {DEFAULT_WARM})",
        default=str(DEFAULT_WARM),
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}: run this (sync) test inside a fresh network namespace from nspool's pool",
    )


@pytest.fixture(scope="session")
def nspool_workers() -> Iterator[Workers]:
    """The session pool's own workers (marked tests run on them), shut
    down when the session ends."""
    workers = Workers()
    try:
        yield workers
    finally:
        workers.shutdown(wait=True)


@pytest.fixture(scope="session")
def nspool_pool(pytestconfig: pytest.Config, nspool_workers: Workers) -> Iterator[Pool]:
    """The session's warm pool of fresh network namespaces, made on first
    use and closed when the session ends (before its workers)."""
    warm = int(pytestconfig.getini("nspool_warm"))
    pool = Pool(Kind.NET, warm=warm, workers=nspool_workers)
    try:
        pool.start()
        yield pool
    finally:
        pool.close()


@pytest.fixture
def netns(nspool_pool: Pool) -> Iterator[NamespaceSet]:
    """A fresh network namespace for this test (``lo`` up), thrown away after
    it: ``netns.run_sync(fn)``, ``netns.call_inline(socket.socket)``, ..."""
    with nspool_pool.lease() as s:
        yield s


@pytest.fixture
async def anetns(nspool_pool: Pool) -> AsyncIterator[NamespaceSet]:
    """:func:`netns` for anyio tests: ``await anetns.run(fn)``,
    ``await anetns.run_process([...])``, ..."""
    async with nspool_pool.lease() as s:
        yield s


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # A marked test needs the pool: request its fixture, so that it is made
    # (and closed at the end) by pytest like any other.
    for item in items:
        if isinstance(item, pytest.Function) and item.get_closest_marker(MARKER) is not None:
            for name in (WORKERS_FIXTURE, POOL_FIXTURE):
                if name not in item.fixturenames:
                    item.fixturenames.append(name)


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Call a test marked ``netns`` on a worker inside a fresh netns."""
    if pyfuncitem.get_closest_marker(MARKER) is None:
        return None
    function = pyfuncitem.obj
    if inspect.iscoroutinefunction(function) or inspect.isasyncgenfunction(function):
        pytest.fail(
            f"@pytest.mark.{MARKER} runs sync tests only: give an async test the "
            "`anetns` fixture instead",
            pytrace=False,
        )
    pool = pyfuncitem.funcargs[POOL_FIXTURE]
    workers = pyfuncitem.funcargs[WORKERS_FIXTURE]
    assert isinstance(pool, Pool)
    assert isinstance(workers, Workers)
    # The test function's own arguments (the fixtures it asked for).
    names = [n for n in inspect.signature(function).parameters if n in pyfuncitem.funcargs]
    kwargs: dict[str, Any] = {name: pyfuncitem.funcargs[name] for name in names}
    with pool.lease() as s:
        workers.run_sync(s, function, **kwargs)
    return True
