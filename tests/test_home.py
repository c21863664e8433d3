"""Home (nspool._home): the one routine that takes a thread back by fd and
checks every link, as workers and the pool's creator thread use it."""

from __future__ import annotations

import pytest

from nspool import Kind, _home, _sys
from nspool._thread_ns import ThreadLinks

from .conftest import on_thread, thread_ns


def test_go_back_returns_the_thread_and_checks_every_link() -> None:
    home = _home.Home(use_anchor=False, spawner=False)
    try:

        def unshare_and_go_back() -> str:
            links = ThreadLinks()
            try:
                _sys.unshare(Kind.UTS | Kind.IPC)
                assert thread_ns("uts") != before_uts
                home.go_back(links, [Kind.UTS, Kind.IPC])
                return thread_ns("uts")
            finally:
                links.close()

        before_uts = thread_ns("uts")
        assert on_thread(unshare_and_go_back) == before_uts
    finally:
        home.close()


def test_go_back_catches_a_kind_it_did_not_move() -> None:
    home = _home.Home(use_anchor=False, spawner=False)
    try:

        def stray_in_ipc() -> None:
            links = ThreadLinks()
            try:
                _sys.unshare(Kind.UTS | Kind.IPC)
                home.go_back(links, [Kind.UTS])
            finally:
                links.close()

        with pytest.raises(_home.Stranded, match="unexpected ipc"):
            on_thread(stray_in_ipc)
    finally:
        home.close()
