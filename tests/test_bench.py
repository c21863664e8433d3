"""``python -m nspool bench``: the suite run in-process on the baselines
module at tiny sizes, its JSON and PNGs written to a temporary results
directory; no netns name, fd, thread or mount left behind (the autouse
``no_leaks`` fixture, and ``ip netns list``); unknown names are a usage
error. The plots are also drawn from made-up rows, without root."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import bench._common
import bench.baselines
import bench.suite
from bench.__main__ import main as bench_main
from bench._common import Row, fill_ratios, show_ratio
from nspool import Kind, NamespaceSet, cli
from nspool.nsset import NETNS_RUN_DIR

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

#: A few ops of everything: the whole module in a few seconds.
TINY = dataclasses.replace(
    bench.baselines.QUICK,
    rounds=1,
    netns_ops=2,
    process_ops=2,
    create_ops=2,
    warmup=1,
    warm=4,
    batch=2,
    settle_max=0.05,
)

ROW_KEYS = {
    "group",
    "name",
    "unit",
    "n",
    "median",
    "p10",
    "p90",
    "p99",
    "mean",
    "baseline",
    "ratio",
    "speedup",
    "goal",
    "met",
}


def netns_names() -> set[str]:
    """The names ``ip netns list`` shows."""
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return {line.split()[0] for line in listing.stdout.splitlines() if line.strip()}


def bench_names() -> set[str]:
    """Names the baselines module of this process would give a netns."""
    prefix = f"nspb{os.getpid() % 100000}x"
    try:
        return {n for n in os.listdir(NETNS_RUN_DIR) if n.startswith(prefix)}
    except FileNotFoundError:
        return set()


@pytest.fixture
def results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every file the suite writes goes here, not into the checkout."""
    out = tmp_path / "results"
    monkeypatch.setattr(bench._common, "RESULTS_DIR", out)
    return out


@pytest.fixture
def matplotlib_fonts_closed() -> Iterator[None]:
    """matplotlib keeps every font it has drawn with open for the rest of
    the process (a cache, by thread): emptied after the test, before the leak
    check, so that it sees only what the benchmark itself left."""
    yield
    from matplotlib import font_manager

    font_manager._get_font.cache_clear()  # type: ignore[attr-defined]


# s.run_process uses the default Workers: shut down after the test.
@pytest.mark.usefixtures("fresh_default", "matplotlib_fonts_closed")
def test_bench_quick_baselines(
    results: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``nspool bench --quick --only baselines`` returns 0, prints the table
    with the goal row, writes the module's JSON, suite.json and the PNGs,
    and leaves no netns name behind."""
    monkeypatch.setattr(bench.baselines, "QUICK", TINY)
    before = netns_names()
    assert cli.main(["bench", "--quick", "--only", "baselines"]) == 0
    out = capsys.readouterr().out
    assert netns_names() == before
    assert not bench_names()

    assert "goal >= 20x faster" in out
    assert "x faster" in out
    assert "met?" in out
    assert "lower is better" in out
    assert "DESIGN" not in out
    assert "shared" not in out

    suite = json.loads((results / "suite.json").read_text())
    assert suite["meta"]["modules"] == ["baselines"]
    assert suite["meta"]["failed"] == {}
    assert suite["meta"]["quick"] is True
    module = suite["modules"]["baselines"]
    assert module["meta"]["sizes"] == dataclasses.asdict(TINY)
    rows = module["results"]
    for row in rows:
        assert set(row) >= ROW_KEYS, row
        assert row["median"] > 0
    assert {row["group"] for row in rows} == {"a", "b", "c"}
    by_name = {row["name"]: row for row in rows}
    assert len(by_name) == len(rows), "row names must be unique (ratios look them up)"
    goal = by_name["await pool.run(noop), fresh netns per call"]
    assert goal["baseline"] == "pyroute2 NetNS(new name) + get_links() + remove()"
    assert goal["goal"] == "goal >= 20x faster"
    assert goal["met"] in (True, False)
    assert goal["speedup"] == pytest.approx(1 / goal["ratio"])
    assert goal["misses"] + goal["hits"] == goal["n"] + TINY.warmup
    assert by_name["subprocess.run(ip netns exec NAME true)"]["ratio"] is None
    for row in rows:
        if row["baseline"] is not None:
            assert row["baseline"] in by_name
            assert row["ratio"] == pytest.approx(row["median"] / by_name[row["baseline"]]["median"])

    # The module's own JSON, as `python -m bench.baselines` writes it.
    own = json.loads((results / "baselines.json").read_text())
    assert [r["name"] for r in own["results"]] == [r["name"] for r in rows]
    assert module["json"] == str(results / "baselines.json")

    for png in ("baselines.png", "suite_speedups.png"):
        assert (results / png).read_bytes().startswith(PNG_MAGIC), png
    assert suite["plots"] == {
        "baselines": str(results / "baselines.png"),
        "speedups": str(results / "suite_speedups.png"),
    }


def test_bench_unknown_name_is_a_usage_error(
    results: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unknown ``--only`` name: exit code 2, a message naming it and the
    choices, nothing measured or written."""
    assert cli.main(["bench", "--only", "nosuch", "pool"]) == 2
    out = capsys.readouterr().out
    assert "unknown benchmark nosuch" in out
    assert "baselines" in out  # the choices
    assert not results.exists()
    assert bench_main(["--quick", "--only", "nosuch", "other"]) == 2
    assert "unknown benchmarks nosuch, other" in capsys.readouterr().out


def test_select() -> None:
    """Modules run in the suite's order, aliases and repeats folded."""
    assert bench.suite.select(None) == list(bench.suite.MODULES)
    assert bench.suite.select(["baselines", "async", "pool", "aio"]) == [
        "pool",
        "aio",
        "baselines",
    ]
    with pytest.raises(bench.suite.UsageError, match="nosuch"):
        bench.suite.select(["pool", "nosuch"])


@pytest.mark.usefixtures("matplotlib_fonts_closed")
def test_ratio_cell_and_plots(tmp_path: Path) -> None:
    """Rows marked ``faster`` show the speed-up beside the ratio; the plots
    of made-up rows (times spread widely, a rate, memory) are PNGs."""
    pyroute2 = Row("a", "baseline call", "us", [8000.0, 9000.0, 10000.0])
    fast = Row("a", "pooled call", "us", [90.0, 100.0, 110.0], pyroute2.name, faster=True)
    slow = Row("a", "slower call", "us", [18000.0], pyroute2.name)
    raw = Row("b", "raw rate", "ops/s", [1500.0])
    pool = Row("b", "pool rate", "ops/s", [1200.0], raw.name)
    memory = Row("c", "memory", "KiB", [230.0])
    rows = [pyroute2, fast, slow, raw, pool, memory]
    fill_ratios(rows)
    assert show_ratio(pyroute2) == "baseline"
    assert show_ratio(fast) == "0.0111x = 90x faster"
    assert show_ratio(slow) == "2.00x"
    assert fast.as_json()["speedup"] == pytest.approx(90.0)

    from bench import plot

    assert plot.speedup(fast) == pytest.approx(90.0)
    assert plot.speedup(pool) == pytest.approx(0.8)  # a rate: this / baseline
    assert plot.speedup(raw) is None
    paths = [
        plot.plot_module(rows, title="made up", path=tmp_path / "module.png"),
        plot.plot_speedups({"made": rows}, path=tmp_path / "speedups.png", subtitle="test"),
    ]
    for path in paths:
        assert path.read_bytes().startswith(PNG_MAGIC)


@pytest.mark.usefixtures("matplotlib_fonts_closed")
def test_a_failing_module_is_reported(
    results: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A module that raises: exit code 1, its error printed and recorded in
    suite.json; the suite still finishes."""

    def broken(sizes: object, console: object) -> list[Row]:
        raise RuntimeError("made to fail")

    monkeypatch.setattr(bench.baselines, "measure", broken)
    assert cli.main(["bench", "--quick", "--only", "baselines"]) == 1
    out = capsys.readouterr().out
    assert "bench.baselines failed" in out
    assert "made to fail" in out
    suite = json.loads((results / "suite.json").read_text())
    assert suite["meta"]["failed"] == {"baselines": "RuntimeError: made to fail"}
    assert suite["modules"] == {}


def test_goals_are_checked_and_missed_ones_flagged() -> None:
    """A "goal" is checked against the run: the speed-up, the ratio or the
    p99; a reference figure ("expected: ...") is not; the table says which
    way is better and flags a miss with NO."""
    base = Row("a", "base", "us", [1000.0])
    fast = Row("a", "fast", "us", [40.0], base.name, goal="goal >= 20x faster", faster=True)
    slow = Row("a", "slow", "us", [100.0], base.name, goal="goal >= 20x faster", faster=True)
    ratio = Row("a", "ratio", "us", [900.0], base.name, goal="goal <= 0.85x")
    p99 = Row("b", "tail", "us", [50.0, 60.0, 200.0], goal="goal: p99 < 0.1 ms")
    ref = Row("b", "ref", "us", [50.0], goal="expected: ~0.5 ms kernel CPU")
    rate = Row("c", "rate", "ops/s", [100.0])
    rows = [base, fast, slow, ratio, p99, ref, rate]
    fill_ratios(rows)
    assert (fast.met, slow.met, ratio.met, p99.met, ref.met, base.met) == (
        True,
        False,
        False,
        False,
        None,
        None,
    )
    assert fast.as_json()["met"] is True
    assert bench._common.show_met(slow.met) == "NO"
    assert bench._common.better_note(["us", "KiB"]) == "lower is better"
    assert bench._common.better_note(["ops/s"]) == "higher is better"
    assert "higher is better" in bench._common.better_note(["us", "ops/s"])

    from rich.console import Console

    console = Console(width=200, record=True)
    meta = {"kernel": "k", "python": "p", "cpus": 2, "backends": ["ctypes"], "quick": True}
    bench._common.render(rows, {**meta, "seconds": 1.0}, console, title="t")
    text = console.export_text()
    assert "met?" in text
    assert "DESIGN" not in text
    assert "lower is better" in text
    assert "higher is better" in text
    assert sum(line.rstrip(" │").endswith("NO") for line in text.splitlines()) == 3
    rate_line = next(line for line in text.splitlines() if "│ rate" in line)
    assert "baseline" not in rate_line  # compared with nothing
    assert "µs, " not in bench._common.better_note(["ops/s"])
    assert bench._common.better_note(["us", "ops/s"]).startswith("µs: lower is better")


def test_ratio_near_one_reads_sensibly() -> None:
    """A ratio near 1 of a "faster" row reads "same", a bit above it
    "slower", a bit below it "faster" with two decimals, never 1.0x faster."""
    base = Row("a", "base", "us", [1000.0])
    rows = [base] + [
        Row("a", f"r{v}", "us", [v], base.name, faster=True) for v in (990.0, 1000.0, 1010.0)
    ]
    fill_ratios(rows)
    assert [show_ratio(r) for r in rows[1:]] == [
        "0.99x = 1.01x faster",
        "1.00x = same",
        "1.01x = 1.01x slower",
    ]


@pytest.mark.usefixtures("matplotlib_fonts_closed")
def test_panel_of_a_lone_row_has_no_baseline_nor_negative_whisker() -> None:
    """A memory row with a noisy p10 below zero: its whisker stops at 0, the
    axis starts there, and its label names no baseline."""
    from matplotlib.figure import Figure

    from bench import plot

    memory = Row("e", "memory", "KiB", [-40.0, 200.0, 230.0, 240.0, 250.0])
    fig = Figure()
    ax = fig.subplots()
    plot._panel(ax, [memory], "KiB")
    assert ax.get_xlim()[0] == 0
    labels = [child.get_text() for child in ax.texts]
    assert labels == ["230 KiB"]
    assert "better" in ax.get_xlabel()


def test_names_left_over_are_removed() -> None:
    """A netns name a variant made but did not remove (an error half-way)
    is removed by ``Names.remove_all``; removed names are not touched."""
    names = bench.baselines.Names()
    kept, removed = names.new(), names.new()
    with NamespaceSet.unshare(Kind.NET) as s:
        s.persist(kept)
        s.persist(removed)
    NamespaceSet.unpersist(removed)
    names.done(removed)
    assert kept in netns_names()
    assert names.remove_all() == [kept]
    assert kept not in netns_names()
    assert not bench_names()
