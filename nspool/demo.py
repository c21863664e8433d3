"""``python -m nspool demo``: a small daemon that serves each request in a
fresh network namespace, from a warm pool, against making one per request.

A request (:func:`handle`) runs on a thread inside its own netns: it binds
``127.0.0.1:PORT`` (the same port for every request), connects to itself,
sends ``hello from request N``, echoes it back and checks the reply. Many
requests run at once and all bind the same address, which only works because
each has its own network stack. A netns serves one request only: the closed
connection leaves the port in ``TIME_WAIT``, and the listener does not set
``SO_REUSEADDR``, so even a second request after the first would fail with
``EADDRINUSE`` in the same netns. Each request returns its netns's cookie
(``SO_NETNS_COOKIE``, never reused by the kernel), and the table counts the
distinct namespaces that served.

The variants, measured in the same process, in interleaved rounds:

* ``nspool Pool``: ``await pool.run(handle, n)`` on a ``Pool(Kind.NET,
  warm=...)``; the set is thrown away after the request.
* ``netns per request`` (the baseline): on an anyio worker thread,
  ``unshare(CLONE_NEWNET)``, ``lo`` up, the request, then ``setns`` back home
  by fd. The quickest way to do it by hand: the kernel's creation cost is
  paid inside every request.
* ``ip netns per request``: ``ip netns add``, enter it by its
  ``/run/netns`` file, ``lo`` up, the request, back home, ``ip netns del``:
  shelling out to iproute2. At most :data:`IP_NETNS_MAX` requests, as it is
  slow.

Load is a closed loop: ``concurrency`` clients each send their next request
as soon as the last one is answered. A request's latency runs from the
moment its client sends it until its reply is checked; a variant's
requests/s is its requests over the wall time of its rounds. Before each
variant's turn the demo waits (at most :data:`SETTLE_MAX` seconds) for the
CPUs to be quiet, since the kernel frees dropped namespaces in the
background, and for the pool to be full again.

Reading the table: the pool takes the creation of a netns out of the
request, not off the machine. Every variant creates and frees one netns per
request; the pool does it on its creator and closer threads, ahead of
demand. When requests come faster than the creators refill (the ``misses``
line), or when the CPUs are all busy anyway, those threads compete with the
requests, and the pool cannot beat the kernel's own creation rate.

The handler is a plain function with blocking sockets run on a worker: one
thread hop per request. The async helpers (``s.create_tcp_listener``,
``s.connect_tcp``) do the same exchange on the event loop, but cost more
hops here (the names are resolved inside the set) and measured slower.

Threads: :func:`run` blocks its calling thread, which runs the event loop
(anyio on asyncio). Besides it: the pool's creators and closer, the demo's
own ``Workers``, and anyio's worker threads for the baselines. Before
:func:`run` returns, failures included, the pool is closed, its threads and
the workers joined, every ``ip netns`` name deleted, and anyio's threads told
to exit (they do so at once, back in the host's netns).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import platform
import shutil
import socket
import struct
import subprocess
import time
import traceback
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn
from rich.table import Table

from . import _sys
from .kinds import Kind
from .net import loopback_up
from .nsset import NamespaceSet
from .pool import Pool, PoolStats
from .workers import Workers

__all__ = [
    "HOST",
    "IP_NETNS_MAX",
    "PORT",
    "ROUNDS",
    "Result",
    "exchange",
    "handle",
    "netns_cookie",
    "open_listener",
    "run",
]

#: Every request binds this address, each in its own netns.
HOST = "127.0.0.1"
PORT = 8080
#: Seconds a request's socket waits before it gives up: a broken request
#: fails instead of hanging the demo.
SOCKET_TIMEOUT = 5.0
#: Rounds the variants take turns in, so that a slow phase of the machine
#: (the kernel freeing namespaces, say) hits each of them alike.
ROUNDS = 4
#: Requests the ``ip netns`` variant serves at most: it costs milliseconds
#: each (two processes), and the demo should stay short.
IP_NETNS_MAX = 200
#: Before a round: wait at most this long (seconds) for quiet CPUs and a
#: full pool; quiet is below SETTLE_BUSY of the CPUs over SETTLE_WINDOW.
SETTLE_MAX = 1.0
SETTLE_BUSY = 0.15
SETTLE_WINDOW = 0.05

#: ``<asm-generic/socket.h>``; Python 3.11 does not name it (Linux 5.14+).
SO_NETNS_COOKIE = getattr(socket, "SO_NETNS_COOKIE", 71)

POOL = "nspool Pool"
PER_REQUEST = "netns per request"
IP_NETNS = "ip netns per request"
#: The variant the others' requests/s are compared with.
BASELINE = PER_REQUEST

_THREAD_NETNS = "/proc/thread-self/ns/net"


# -- the request ------------------------------------------------------------------


def open_listener() -> socket.socket:
    """A TCP listener on ``HOST:PORT`` in the calling thread's netns (the
    thread's namespace decides, whichever thread uses the socket later).

    Raises ``OSError`` (``EADDRINUSE``) if the address is taken in that
    netns, including by a connection still in ``TIME_WAIT``.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.settimeout(SOCKET_TIMEOUT)
        # No SO_REUSEADDR, on purpose: a netns that already served a request
        # must refuse the port, which shows each request had a fresh one.
        sock.bind((HOST, PORT))
        sock.listen(1)
    except BaseException:
        sock.close()
        raise
    return sock


def exchange(listener: socket.socket, request: int) -> int | None:
    """Connect to ``listener`` from the calling thread's netns, send
    ``hello from request N``, accept, echo it back and check the reply.
    Returns the netns cookie of ``listener`` (see :func:`netns_cookie`).

    Blocks the calling thread for about 0.1 ms; raises ``OSError`` or
    ``ValueError`` (a wrong reply) if the exchange fails. The listener stays
    open; the connection is closed.
    """
    message = f"hello from request {request}".encode()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as client:
        client.settimeout(SOCKET_TIMEOUT)
        client.connect(listener.getsockname())
        conn, _peer = listener.accept()
        with conn:
            conn.settimeout(SOCKET_TIMEOUT)
            client.sendall(message)
            conn.sendall(_receive(conn, len(message)))
            reply = _receive(client, len(message))
    if reply != message:
        raise ValueError(f"request {request}: sent {message!r}, got back {reply!r}")
    return netns_cookie(listener)


def handle(request: int) -> int | None:
    """Serve request number ``request`` in the calling thread's netns: bind
    ``HOST:PORT``, talk to itself (:func:`exchange`), close. Returns the
    netns cookie. Meant for a thread inside a fresh netns with ``lo`` up."""
    with open_listener() as listener:
        return exchange(listener, request)


def netns_cookie(sock: socket.socket) -> int | None:
    """The cookie of the netns ``sock`` lives in: unique for the kernel's
    uptime, unlike the netns's inode number. ``None`` before Linux 5.14."""
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8)
    except OSError:
        return None
    cookie: int = struct.unpack("=Q", raw)[0]
    return cookie


def _receive(sock: socket.socket, size: int) -> bytes:
    """Exactly ``size`` bytes from ``sock``, or fewer if it closes first."""
    chunks: list[bytes] = []
    left = size
    while left:
        chunk = sock.recv(left)
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


# -- the baselines (on anyio worker threads) ----------------------------------------


def _visit(enter: Callable[[], None], request: int) -> int | None:
    """On the calling thread: ``enter()`` moves it into a netns; then ``lo``
    up, :func:`handle`, and back home by fd, checked.

    The thread is one of anyio's, reused for other work: if going home
    failed it would stay in the netns, so that raises (and ends the demo).
    """
    home = _sys.open_ns(_THREAD_NETNS, Kind.NET)
    try:
        home_id = os.fstat(home).st_ino
        enter()
        try:
            loopback_up()
            return handle(request)
        finally:
            _sys.setns(home, Kind.NET)
            if os.stat(_THREAD_NETNS).st_ino != home_id:
                raise RuntimeError("a baseline thread could not go back to its netns")
    finally:
        os.close(home)


def _fresh_netns_request(request: int) -> int | None:
    """The baseline: a netns made on the spot by the request's own thread."""
    return _visit(lambda: _sys.unshare(Kind.NET), request)


def _ip(*args: str) -> None:
    """Run ``ip ARGS``; raise ``RuntimeError`` with its message if it fails."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
    if done.returncode:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip() or done.returncode}")


def _ip_netns_request(request: int, name: str) -> int | None:
    """A named netns made and deleted by ``ip netns`` around the request."""
    _ip("netns", "add", name)
    try:
        with NamespaceSet.from_name(name) as s:
            fd = s.fds(Kind.NET)[Kind.NET]
            return _visit(lambda: _sys.setns(fd, Kind.NET), request)
    finally:
        _ip("netns", "del", name)


# -- measuring ------------------------------------------------------------------------


@dataclasses.dataclass
class Result:
    """What one variant measured. Latencies in seconds, successful requests
    only; ``seconds`` is the wall time of its rounds."""

    name: str
    planned: int
    latencies: list[float] = dataclasses.field(default_factory=list)
    failures: int = 0
    first_error: BaseException | None = None
    seconds: float = 0.0
    cookies: set[int] = dataclasses.field(default_factory=set)

    @property
    def done(self) -> int:
        """Requests answered and checked."""
        return len(self.latencies)

    @property
    def rate(self) -> float:
        """Successful requests per second of wall time."""
        return self.done / self.seconds if self.seconds > 0 else 0.0

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile of the latencies (seconds), ``None`` if none."""
        if not self.latencies:
            return None
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def as_json(self, baseline: Result | None) -> dict[str, Any]:
        def ms(value: float | None) -> float | None:
            return None if value is None else value * 1000

        return {
            "name": self.name,
            "requests": self.planned,
            "ok": self.done,
            "failed": self.failures,
            "distinct_netns": len(self.cookies) if self.cookies else None,
            "seconds": self.seconds,
            "requests_per_s": self.rate,
            "p50_ms": ms(self.quantile(0.50)),
            "p90_ms": ms(self.quantile(0.90)),
            "p99_ms": ms(self.quantile(0.99)),
            "ratio_vs_baseline": _ratio(self, baseline),
            "first_error": None if self.first_error is None else repr(self.first_error),
        }


Request = Callable[[int], Awaitable[int | None]]


@dataclasses.dataclass
class _Variant:
    result: Result
    call: Request
    task: TaskID
    numbers: Iterator[range]


def _ratio(result: Result, baseline: Result | None) -> float | None:
    if baseline is None or baseline.rate <= 0 or result.done == 0:
        return None
    return result.rate / baseline.rate


def _chunks(total: int, rounds: int) -> Iterator[range]:
    """``range(total)`` cut into ``rounds`` consecutive, nearly equal parts."""
    edges = [total * i // rounds for i in range(rounds + 1)]
    return (range(a, b) for a, b in itertools.pairwise(edges))


async def _serve(variant: _Variant, numbers: range, concurrency: int, progress: Progress) -> None:
    """Serve the requests ``numbers`` with ``concurrency`` clients on the
    event loop, recording into ``variant.result``. A failed request is
    counted and its client goes on."""
    result = variant.result
    pending = iter(numbers)  # shared: each client takes the next number

    async def client() -> None:
        for number in pending:
            started = time.perf_counter()
            try:
                cookie = await variant.call(number)
            except Exception as exc:
                result.failures += 1
                if result.first_error is None:
                    result.first_error = exc
            else:
                result.latencies.append(time.perf_counter() - started)
                if cookie is not None:
                    result.cookies.add(cookie)
            progress.advance(variant.task)

    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(min(concurrency, len(numbers))):
            tg.start_soon(client)
    result.seconds += time.perf_counter() - started
    progress.update(variant.task, note=f"{result.rate:,.0f} req/s")


def _cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs, from ``/proc/stat``."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:9]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


async def _settle(pool: Pool) -> None:
    """Wait, at most SETTLE_MAX seconds, until the CPUs are quiet (the
    kernel has freed the namespaces dropped so far) and the pool is full."""
    deadline = time.monotonic() + SETTLE_MAX
    while time.monotonic() < deadline:
        busy0, total0 = _cpu_times()
        await anyio.sleep(SETTLE_WINDOW)
        busy1, total1 = _cpu_times()
        quiet = total1 > total0 and (busy1 - busy0) / (total1 - total0) < SETTLE_BUSY
        if quiet and pool.stats().ready >= pool.warm:
            return


@dataclasses.dataclass
class _Run:
    results: list[Result]
    pool: PoolStats
    seconds: float


async def _measure(args: argparse.Namespace, console: Console, with_ip: bool) -> _Run:
    """Every variant, in interleaved rounds, under a progress bar. Runs on
    the event loop thread; the pool, the Workers and anyio's threads are
    gone when it returns."""
    started = time.perf_counter()
    limiter = anyio.CapacityLimiter(args.concurrency)
    pid = os.getpid()

    async def fresh(number: int) -> int | None:
        return await anyio.to_thread.run_sync(_fresh_netns_request, number, limiter=limiter)

    async def named(number: int) -> int | None:
        name = f"nspool-demo-{pid}-{number}"
        return await anyio.to_thread.run_sync(_ip_netns_request, number, name, limiter=limiter)

    progress = Progress(
        TextColumn("{task.description:<22}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[note]}"),
        console=console,
    )
    with Workers(max_workers=args.concurrency) as workers:
        async with Pool(Kind.NET, warm=args.warm, workers=workers) as pool:

            async def pooled(number: int) -> int | None:
                # `handle` is looked up per call, so a test can swap it.
                return await pool.run(handle, number)

            plan: list[tuple[str, int, Request]] = [
                (POOL, args.requests, pooled),
                (PER_REQUEST, args.requests, fresh),
            ]
            if with_ip:
                plan.append((IP_NETNS, min(IP_NETNS_MAX, args.requests), named))
            with progress:
                variants = [
                    _Variant(
                        result=Result(name, planned),
                        call=call,
                        task=progress.add_task(name, total=planned, note=""),
                        numbers=_chunks(planned, ROUNDS),
                    )
                    for name, planned, call in plan
                ]
                for round_ in range(ROUNDS):
                    # A different variant goes first each round: the one
                    # after a variant pays for the namespaces it dropped.
                    shift = round_ % len(variants)
                    for variant in variants[shift:] + variants[:shift]:
                        numbers = next(variant.numbers)
                        if numbers:
                            await _settle(pool)
                            await _serve(variant, numbers, args.concurrency, progress)
            stats = pool.stats()
    return _Run([v.result for v in variants], stats, time.perf_counter() - started)


# -- the report -------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:,.2f} ms"


def _render(run: _Run, args: argparse.Namespace, console: Console) -> None:
    baseline = next((r for r in run.results if r.name == BASELINE), None)
    table = Table(
        title=f"{args.concurrency} requests in flight, each binding {HOST}:{PORT} in its own netns",
        title_justify="left",
    )
    table.add_column("variant", style="bold")
    table.add_column("requests", justify="right")
    table.add_column("netns", justify="right")
    table.add_column("requests/s", justify="right")
    for q in ("p50", "p90", "p99"):
        table.add_column(q, justify="right")
    table.add_column(f"vs {BASELINE}", justify="right")
    for result in run.results:
        ratio = _ratio(result, baseline)
        table.add_row(
            result.name,
            f"{result.done:,}" if not result.failures else f"{result.done:,}/{result.planned:,}",
            f"{len(result.cookies):,}" if result.cookies else "-",
            f"{result.rate:,.0f}",
            _ms(result.quantile(0.50)),
            _ms(result.quantile(0.90)),
            _ms(result.quantile(0.99)),
            "baseline" if result is baseline else "-" if ratio is None else f"{ratio:.2f}x",
        )
    console.print(table)
    stats = run.pool
    console.print(
        f"pool: {stats.hits:,} requests took a ready netns, {stats.misses:,} made one on the "
        f"spot (none was ready); {stats.created:,} created in all.",
        markup=False,
        highlight=False,
    )
    console.print(
        "netns: distinct namespaces that served, by cookie. Latency: from sending a request "
        f"to its checked reply. Took {run.seconds:.1f} s.",
        markup=False,
        highlight=False,
    )


def _write_json(path: Path, run: _Run, args: argparse.Namespace) -> None:
    baseline = next((r for r in run.results if r.name == BASELINE), None)
    document = {
        "meta": {
            "kernel": os.uname().release,
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "requests": args.requests,
            "concurrency": args.concurrency,
            "warm": args.warm,
            "rounds": ROUNDS,
            "address": f"{HOST}:{PORT}",
            "baseline": BASELINE,
            "seconds": run.seconds,
        },
        "variants": [result.as_json(baseline) for result in run.results],
        "pool": dataclasses.asdict(run.pool),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")


def _report_failures(results: list[Result], console: Console) -> bool:
    """Print each failing variant's count and first error; whether any failed."""
    failed = False
    for result in results:
        if not result.failures:
            continue
        failed = True
        console.print(
            f"{result.name}: {result.failures:,} of {result.planned:,} requests failed; "
            "the first error:",
            markup=False,
            highlight=False,
        )
        if result.first_error is not None:
            text = "".join(traceback.format_exception(result.first_error)).rstrip()
            console.print(text, markup=False, highlight=False)
    return failed


def run(args: argparse.Namespace, console: Console) -> int:
    """``nspool demo``: measure, print the table (and write ``--json``).

    Returns 0 if every request succeeded, 1 if any failed or no netns can be
    made here, 2 for bad arguments. Blocks the calling thread, which runs
    the event loop, for the whole demo (about 10 s with the defaults on two
    CPUs); the calling thread's namespaces are untouched.
    """
    if args.requests < 1 or args.concurrency < 1 or args.warm < 0:
        console.print(
            "nspool demo: --requests and --concurrency must be at least 1, --warm at least 0",
            markup=False,
        )
        return 2
    try:  # a clear message instead of thousands of failed requests
        NamespaceSet.unshare(Kind.NET).close()
    except OSError as exc:
        console.print(
            f"nspool demo: cannot create a network namespace here ({exc}); "
            "see `python -m nspool doctor`",
            markup=False,
        )
        return 1
    with_ip = shutil.which("ip") is not None
    n_ip = min(IP_NETNS_MAX, args.requests)
    console.print(
        f"nspool demo: {args.requests:,} requests, {args.concurrency} in flight. Each binds "
        f"{HOST}:{PORT} in its own network namespace and talks to itself, which only "
        "isolation allows.",
        markup=False,
        highlight=False,
    )
    console.print(
        f"From a pool of {args.warm} ready netns, against creating a netns per request"
        + (f", and `ip netns add`/`del` ({n_ip:,} requests)." if with_ip else "."),
        markup=False,
        highlight=False,
    )
    if not with_ip:
        console.print("(no `ip` command here: the ip netns variant is skipped)", markup=False)
    measured = anyio.run(_measure, args, console, with_ip)
    _render(measured, args, console)
    if args.json:
        _write_json(Path(args.json), measured, args)
        console.print(f"JSON: {args.json}", markup=False, highlight=False)
    return 1 if _report_failures(measured.results, console) else 0
