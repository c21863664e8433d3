"""``python -m nspool demo``: in-process through ``cli.main`` (under the
autouse ``no_leaks`` fixture: fds, threads, mounts), its request handler's
isolation against the real kernel, and its load generator (:func:`demo.serve`)
against fake requests: paced sends, latency from the schedule."""

from __future__ import annotations

import errno
import json
import math
import os
import re
import time
from pathlib import Path

import anyio
import pytest

from nspool import Kind, Pool, Workers, _demo_request, _measure, cli, demo

SMALL = ["demo", "--requests", "40", "--rate", "200", "--concurrency", "8", "--warm", "8"]
VARIANTS = (demo.POOL, demo.PER_REQUEST, demo.IP_NETNS)


def table_rows(output: str) -> dict[str, list[list[str]]]:
    """The demo tables' rows by variant name, one per table in order (paced,
    then bursts), cells split on rich's box edges (``│``, or ``|`` where the
    output encoding has none)."""
    rows: dict[str, list[list[str]]] = {}
    for line in output.splitlines():
        cells = [c.strip() for c in re.split(r"[│|┃]", line)]
        cells = [c for c in cells if c]
        if cells and cells[0] in VARIANTS:
            rows.setdefault(cells[0], []).append(cells[1:])
    return rows


def check_ms(cell: str) -> float:
    """The milliseconds in a latency cell such as ``1,234.50``, above 0."""
    value = float(cell.replace(",", ""))
    assert value > 0, cell
    return value


def check_ratio(name: str, cell: str) -> None:
    """``baseline`` in the baseline's row, else a ratio such as ``0.45x``."""
    if name == demo.BASELINE:
        assert cell == "baseline", cell
    else:
        assert cell.endswith("x"), cell
        assert float(cell.removesuffix("x")) > 0, cell


def demo_names() -> set[str]:
    """``ip netns`` names the demo made that still exist."""
    try:
        return {n for n in os.listdir("/run/netns") if n.startswith("nspool-demo-")}
    except FileNotFoundError:
        return set()


def test_demo_prints_tables_and_writes_json(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A small paced run with bursts: exit code 0; in the paced table one
    row per variant with its requests, as many distinct netns as requests, a
    rate, three latencies and the p50 and p99 against the baseline; in the
    bursts table the same without the rate; the JSON holds the same; the
    pool's misses are reported; no ``ip netns`` name is left behind."""
    out_path = tmp_path / "demo.json"
    assert cli.main([*SMALL, "--burst", "8", "--json", str(out_path)]) == 0
    out = capsys.readouterr().out
    rows = table_rows(out)
    assert list(rows) == list(VARIANTS), out
    for name, (paced, bursts) in rows.items():
        requests, netns, rate, p50, p90, p99, p50_ratio, p99_ratio = paced
        assert requests == netns == "40", f"{name}: {paced}"
        assert float(rate.replace(",", "")) > 0, f"{name}: {paced}"
        assert check_ms(p50) <= check_ms(p90) <= check_ms(p99), paced
        check_ratio(name, p50_ratio)
        check_ratio(name, p99_ratio)
        requests, netns, p50, p90, p99, p50_ratio, p99_ratio = bursts
        assert requests == netns == str(demo.ROUNDS * 8), f"{name}: {bursts}"
        assert check_ms(p50) <= check_ms(p90) <= check_ms(p99), bursts
        check_ratio(name, p50_ratio)
        check_ratio(name, p99_ratio)
    assert f"{demo.HOST}:{demo.PORT}" in out
    assert "200 requests/s sent on schedule" in out
    assert re.search(r"Paced requests: 40 took a ready netns, \d+ made one on the spot", out), out

    document = json.loads(out_path.read_text())
    meta = document["meta"]
    assert (meta["requests"], meta["rate"], meta["burst"]) == (40, 200, 8)
    assert (meta["concurrency"], meta["warm"], meta["load"]) == (8, 8, "open loop")
    for phase, planned in (("variants", 40), ("bursts", demo.ROUNDS * 8)):
        by_name = {v["name"]: v for v in document[phase]}
        assert list(by_name) == list(VARIANTS)
        for variant in by_name.values():
            assert variant["requests"] == variant["ok"] == variant["distinct_netns"] == planned
            assert variant["failed"] == 0
            assert variant["requests_per_s"] > 0
            assert 0 < variant["p50_ms"] <= variant["p90_ms"] <= variant["p99_ms"]
            assert variant["p50_vs_baseline"] > 0
            assert variant["p99_vs_baseline"] > 0
        assert by_name[demo.BASELINE]["p50_vs_baseline"] == 1.0
    # Paced at 200/s, 10 requests a round: about 45 ms a round, not less.
    assert document["variants"][0]["seconds"] >= demo.ROUNDS * 9 / 200
    pool = document["pool"]
    assert pool["paced"]["hits"] + pool["paced"]["misses"] == 40
    assert pool["bursts"]["hits"] + pool["bursts"]["misses"] == demo.ROUNDS * 8
    assert pool["hits"] + pool["misses"] == 40 + demo.ROUNDS * 8
    assert pool["failures"] == 0
    assert not demo_names()


def test_rate_0_is_a_closed_loop(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """``--rate 0`` sends as fast as replies come (the saturation number):
    the table says so and adds requests/s against the baseline; no bursts
    table with ``--burst 0``."""
    out_path = tmp_path / "demo.json"
    argv = ["demo", "--requests", "40", "--rate", "0", "--concurrency", "8", "--warm", "8"]
    assert cli.main([*argv, "--burst", "0", "--json", str(out_path)]) == 0
    out = capsys.readouterr().out
    assert "closed loop, 8 requests in flight" in out
    assert re.search(r"Closed-loop requests: \d+ took a ready netns", out), out
    rows = table_rows(out)
    assert list(rows) == list(VARIANTS), out
    for name, tables in rows.items():
        assert len(tables) == 1, tables
        requests, netns, _rate, _p50, _p90, _p99, *ratios = tables[0]
        assert requests == netns == "40"
        assert len(ratios) == 3, tables
        for cell in ratios:
            check_ratio(name, cell)
    document = json.loads(out_path.read_text())
    assert document["meta"]["load"] == "closed loop"
    assert document["bursts"] == []
    assert document["variants"][1]["requests_per_s_vs_baseline"] == 1.0
    assert not demo_names()


def serve_fake(
    rate: float, concurrency: int, requests: int, hold: float
) -> tuple[demo.Result, list[float]]:
    """Run :func:`demo.serve` on fake requests that each take ``hold``
    seconds; the result and the send times of the requests (seconds after
    the start), by request number."""
    result = demo.Result("fake", requests)
    sent: list[float] = [math.nan] * requests
    start = math.nan

    async def call(number: int) -> int | None:
        sent[number] = time.perf_counter() - start
        await anyio.sleep(hold)
        return number

    async def main() -> None:
        nonlocal start
        start = time.perf_counter()
        await demo.serve(call, range(requests), result, rate=rate, concurrency=concurrency)

    anyio.run(main)
    return result, sent


def test_paced_requests_are_sent_on_schedule() -> None:
    """Open loop: request i is sent at i / rate whatever the replies (one
    timer tick early at most, a little late at worst), and with room in
    flight each latency is about its own duration."""
    rate, hold = 100.0, 0.03
    result, sent = serve_fake(rate, concurrency=10, requests=8, hold=hold)
    for i, when in enumerate(sent):
        assert i / rate - _measure.TIMER_SLACK - 0.001 <= when <= i / rate + 0.02, sent
    assert result.done == 8
    assert result.failures == 0
    assert result.cookies == set(range(8))
    assert all(hold <= latency < hold + 0.02 for latency in result.latencies), result.latencies
    assert result.seconds >= 7 / rate + hold


def test_latency_counts_from_the_schedule() -> None:
    """With one request in flight at a time, each request waits for the one
    before: request i, due at i * 10 ms, is answered at (i + 1) * 30 ms, and
    its latency counts the wait (30 + 20 i ms), not only its own 30 ms as a
    closed loop would (no coordinated omission)."""
    rate, hold, n = 100.0, 0.03, 6
    result, sent = serve_fake(rate, concurrency=1, requests=n, hold=hold)
    latencies = result.latencies  # recorded in completion order: 0, 1, 2, ...
    for i, latency in enumerate(latencies):
        expected = (i + 1) * hold - i / rate
        assert expected <= latency + _measure.TIMER_SLACK < expected + 0.015 * (i + 1), latencies
    assert sent[-1] >= (n - 1) * hold  # sent late, when the one before was done
    assert max(latencies) > 2.5 * hold

    closed, _sent = serve_fake(0, concurrency=1, requests=n, hold=hold)
    assert all(hold <= latency < hold + 0.015 for latency in closed.latencies), closed.latencies


def test_a_burst_is_sent_at_once_up_to_the_concurrency() -> None:
    """``rate`` infinite: every request is due at the start; beyond
    ``concurrency`` they wait their turn, and that counts."""
    hold = 0.03
    result, sent = serve_fake(math.inf, concurrency=4, requests=8, hold=hold)
    assert max(sent[:4]) < 0.01, sent
    assert min(sent[4:]) >= hold, sent
    ordered = sorted(result.latencies)
    assert all(hold <= latency < hold + 0.015 for latency in ordered[:4]), ordered
    assert all(2 * hold <= latency < 2 * hold + 0.03 for latency in ordered[4:]), ordered


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

    monkeypatch.setattr(demo, "handle", flaky)  # the pool's variant
    monkeypatch.setattr(_demo_request, "handle", flaky)  # the baselines'
    argv = ["demo", "--requests", "10", "--rate", "200", "--concurrency", "4", "--warm", "4"]
    # Burst requests are numbered after the paced ones: 10 to 17 here.
    assert cli.main([*argv, "--burst", "2"]) == 1
    out = capsys.readouterr().out
    rows = table_rows(out)
    for name in VARIANTS:
        paced, bursts = rows[name]
        assert paced[0] == "9/10", rows
        assert bursts[0] == "8", rows
        assert f"{name}: 1 of 10 requests failed" in out
    assert "fake failure of request 3" in out
    assert not demo_names()


def test_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    """Counts below 1 (or a negative warm, burst or rate, or a rate that is
    not a finite number) are a usage error: exit code 2, before anything is
    made."""
    assert cli.main(["demo", "--requests", "0"]) == 2
    assert cli.main(["demo", "--concurrency", "0"]) == 2
    assert cli.main(["demo", "--warm", "-1"]) == 2
    assert cli.main(["demo", "--burst", "-1"]) == 2
    assert cli.main(["demo", "--rate", "-1"]) == 2
    assert cli.main(["demo", "--rate", "nan"]) == 2
    assert cli.main(["demo", "--rate", "inf"]) == 2
    assert "at least" in capsys.readouterr().out
