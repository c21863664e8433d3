"""``python -m nspool demo``: in-process through ``cli.main`` (under the
autouse ``no_leaks`` fixture: fds, threads, mounts), and its request
handler's isolation against the real kernel."""

from __future__ import annotations

import errno
import json
import os
import re
from pathlib import Path

import pytest

from nspool import Kind, Pool, Workers, cli, demo

SMALL = ["demo", "--requests", "40", "--concurrency", "8", "--warm", "8"]
VARIANTS = (demo.POOL, demo.PER_REQUEST, demo.IP_NETNS)


def table_rows(output: str) -> dict[str, list[str]]:
    """The demo table's rows by variant name, cells split on rich's box
    edges (``│``, or ``|`` where the output encoding has none)."""
    rows: dict[str, list[str]] = {}
    for line in output.splitlines():
        cells = [c.strip() for c in re.split(r"[│|┃]", line)]
        cells = [c for c in cells if c]
        if cells and cells[0] in VARIANTS:
            rows[cells[0]] = cells[1:]
    return rows


def demo_names() -> set[str]:
    """``ip netns`` names the demo made that still exist."""
    try:
        return {n for n in os.listdir("/run/netns") if n.startswith("nspool-demo-")}
    except FileNotFoundError:
        return set()


def test_demo_prints_a_table_and_writes_json(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A small run: exit code 0, one row per variant with its requests, as
    many distinct netns as requests, a rate and three latencies; the JSON
    holds the same; no ``ip netns`` name is left behind."""
    out_path = tmp_path / "demo.json"
    assert cli.main([*SMALL, "--json", str(out_path)]) == 0
    out = capsys.readouterr().out
    rows = table_rows(out)
    assert list(rows) == list(VARIANTS), out
    for name, cells in rows.items():
        requests, netns, rate, p50, p90, p99, ratio = cells
        assert requests == netns == "40", f"{name}: {cells}"
        assert float(rate.replace(",", "")) > 0, f"{name}: {cells}"
        for cell in (p50, p90, p99):
            assert cell.endswith(" ms"), cell
            assert float(cell.removesuffix(" ms").replace(",", "")) > 0, cell
        if name == demo.BASELINE:
            assert ratio == "baseline", cells
        else:
            assert ratio.endswith("x"), cells
    assert f"{demo.HOST}:{demo.PORT}" in out

    document = json.loads(out_path.read_text())
    assert document["meta"]["requests"] == 40
    assert document["meta"]["concurrency"] == 8
    assert document["meta"]["warm"] == 8
    by_name = {v["name"]: v for v in document["variants"]}
    assert list(by_name) == list(VARIANTS)
    for variant in by_name.values():
        assert variant["requests"] == variant["ok"] == variant["distinct_netns"] == 40
        assert variant["failed"] == 0
        assert variant["requests_per_s"] > 0
        assert 0 < variant["p50_ms"] <= variant["p90_ms"] <= variant["p99_ms"]
    assert by_name[demo.BASELINE]["ratio_vs_baseline"] == 1.0
    assert document["pool"]["hits"] + document["pool"]["misses"] == 40
    assert document["pool"]["failures"] == 0
    assert not demo_names()


def test_requests_in_their_own_netns_bind_the_same_port() -> None:
    """Two requests in two sets from a pool hold HOST:PORT at the same time
    and each talks to itself; a second bind in the same netns is refused
    (the control: without isolation the demo could not work), and so is a
    later request there (TIME_WAIT), which is why each request needs a
    fresh netns."""
    in_use = os.strerror(errno.EADDRINUSE)
    with (
        Workers(max_workers=2) as workers,
        Pool(Kind.NET, warm=2, workers=workers) as pool,
        pool.lease() as a,
        pool.lease() as b,
    ):
        listener_a = workers.run_sync(a, demo.open_listener)
        with listener_a:
            listener_b = workers.run_sync(b, demo.open_listener)
            with listener_b:
                assert listener_a.getsockname() == (demo.HOST, demo.PORT)
                assert listener_b.getsockname() == (demo.HOST, demo.PORT)
                with pytest.raises(OSError, match=in_use):
                    workers.run_sync(a, demo.open_listener)
                cookie_a = workers.run_sync(a, demo.exchange, listener_a, 1)
                cookie_b = workers.run_sync(b, demo.exchange, listener_b, 2)
        assert cookie_a is not None
        assert cookie_b is not None
        assert cookie_a != cookie_b
        with pytest.raises(OSError, match=in_use):
            workers.run_sync(a, demo.handle, 3)


def test_failing_requests_give_a_non_zero_exit_code(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request that fails is counted, its error printed, and the exit
    code is 1; the other requests still run and nothing is left behind.
    The handler is replaced by a fake that fails one request in each
    variant: the real one does not fail on a working kernel."""
    real = demo.handle

    def flaky(request: int) -> int | None:
        if request == 3:
            raise ConnectionResetError(errno.ECONNRESET, "fake failure of request 3")
        return real(request)

    monkeypatch.setattr(demo, "handle", flaky)
    assert cli.main(["demo", "--requests", "10", "--concurrency", "4", "--warm", "4"]) == 1
    out = capsys.readouterr().out
    rows = table_rows(out)
    for name in VARIANTS:
        assert rows[name][0] == "9/10", rows
        assert f"{name}: 1 of 10 requests failed" in out
    assert "fake failure of request 3" in out
    assert not demo_names()


def test_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    """Counts below 1 (or a negative warm) are a usage error: exit code 2,
    before anything is made."""
    assert cli.main(["demo", "--requests", "0"]) == 2
    assert cli.main(["demo", "--concurrency", "0"]) == 2
    assert cli.main(["demo", "--warm", "-1"]) == 2
    assert "at least" in capsys.readouterr().out
