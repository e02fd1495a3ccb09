"""Benchmark rakerone against the libraries under it, on 127.0.0.1 only.

Run it from a clone, in a virtualenv made with ``pip install -e '.[test]'``::

    python bench_rakerone.py            # the full run, printed as a table (about 90 s)
    python bench_rakerone.py --json     # the same, as one JSON object on stdout
    python bench_rakerone.py --quick    # one small smoke round, as CI runs it (about 10 s)

How it stays honest. The servers run in a child process pinned to one core, the measuring
process on the other; the child encodes every WebSocket frame before anything is timed, sends
a whole stream with one ``sendall`` and answers HTTP with a pre-encoded body, and its share of
its core is printed next to every loop. Each comparison runs in one invocation, against the
same server and messages, in rounds whose order rotates; a figure is the median of its
per-round values, with the min-max spread. Only rakerone's public API is used.

The figures (ratios above 1: rakerone is faster; ``import_vs_deps`` is a time ratio).
``stream_*_vs_tuned`` compares ``iter_run_events`` with websocket-client as a careful user
writes it (``skip_utf8_validation=True``, ``recv_data``, ``json.loads``), ``*_vs_default`` with
its plain ``recv()`` loop. ``small``: 200 B events; ``large``: 64 KiB event-shaped (dicts of
scalars); ``listy``: 64 KiB list-heavy, like an order book (thousands of ``[price, size]``).
Every loop keeps its last decoded message alive while it decodes the next, as a real consumer
does (``for event in ...`` holds ``event``). A loop that throws each message away spares the
cyclic garbage collector work that no real program is spared (a list-heavy message's containers
are freed at once instead of surviving into older collections): a baseline no consumer reaches.
``get_run_vs_session`` compares ``get_run`` with a bare reused ``requests.Session().get`` and its
JSON decode; the target is parity, never slower. ``get_run_vs_naive`` (``requests.get``: a
session and connection per call) has no target: requests' adapter alone costs ~37% of a
``requests.get``, so ~2.7x is the ceiling for a client that keeps requests (and your session's
hooks, adapters, proxies) underneath. The ``http.client`` row is the floor of the stack.
``resume_s`` (drop to next event) and ``dead_detect_s`` (a silent peer given up; ping 1 s, pong
timeout 1 s) use rakerone_fake.

Targets are data (``FIGURES``), marked PASS or MISS, never enforced: the exit status is 0 when
every measurement ran, 1 when one failed, 130 on Ctrl-C. Progress goes to stderr. POSIX only.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import importlib.metadata
import json
import os
import platform
import re
import select
import signal
import socket
import socketserver
import statistics
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, NamedTuple, Optional

import requests
import websocket
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, RejectConnection
from wsproto.frame_protocol import FrameProtocol

import rakerone
from rakerone_fake import SAMPLE_RUN, FakeRakerOne

# -- Settings --------------------------------------------------------------------------

HERE = os.path.dirname(os.path.abspath(__file__))
HOST = "127.0.0.1"
API_KEY = "bench-key"
PROJECT_ID = "bench"
RUN_ID = SAMPLE_RUN["id"]
RUN_PATH = f"/api/projects/{PROJECT_ID}/playbook-runs/{RUN_ID}"
ID_PLACEHOLDER = "#" * 14  # every id has this width, so all messages of a workload have one size
LOOP_LIMIT_S = 120  # a timed loop still running then has failed (SIGALRM)
START_LIMIT_S = 120  # the server child encodes every frame before it says it is ready
KIB = 1024

#: Workload -> (shape, bytes of JSON per message).
WORKLOADS = {"small": ("event", 200), "large": ("event", 64 * KIB), "listy": ("book", 64 * KIB)}
RAKERONE, TUNED, DEFAULTS = "rakerone iter_run_events", "websocket-client tuned", "websocket-client defaults"
GET_RUN, SESSION, NAIVE, FLOOR = "rakerone get_run", "requests.Session().get", "requests.get", "http.client (floor)"
IMPORTS = ("import rakerone", "import requests, websocket, attrs", "pass")


class Plan(NamedTuple):
    """How much to measure."""

    name: str
    rounds: int
    small: int  # messages per stream, for each workload
    large: int
    listy: int
    http_calls: int
    import_rounds: int
    recovery_rounds: int


FULL = Plan("full", rounds=5, small=50_000, large=512, listy=512, http_calls=2_000, import_rounds=15,
            recovery_rounds=5)
QUICK = Plan("quick", rounds=1, small=20_000, large=256, listy=256, http_calls=300, import_rounds=3,
             recovery_rounds=1)


class Figure(NamedTuple):
    """Per round, seconds of ``over`` / seconds of ``under`` (same count: a rate ratio), or of ``over``."""

    name: str
    section: str
    over: str
    under: Optional[str]
    direction: str  # ">=" or "<=" the target; "" for a figure reported without one
    target: float
    unit: str


FIGURES = (
    Figure("stream_small_vs_default", "small", DEFAULTS, RAKERONE, ">=", 1.0, "x rate"),
    Figure("stream_small_vs_tuned", "small", TUNED, RAKERONE, ">=", 1.8, "x rate"),
    Figure("stream_large_vs_tuned", "large", TUNED, RAKERONE, ">=", 1.0, "x rate"),
    Figure("stream_listy_vs_tuned", "listy", TUNED, RAKERONE, ">=", 0.95, "x rate"),
    Figure("get_run_vs_session", "http", SESSION, GET_RUN, ">=", 1.0, "x rate"),
    Figure("get_run_vs_naive", "http", NAIVE, GET_RUN, "", 0.0, "x rate"),
    Figure("import_vs_deps", "import", "import rakerone", "import requests, websocket, attrs", "<=", 1.1, "x time"),
    Figure("resume_s", "recovery", "resume_s", None, "", 0.0, "s"),
    Figure("dead_detect_s", "recovery", "dead_detect_s", None, "", 0.0, "s"),
)


class BenchError(Exception):
    """A measurement could not be made, or read a wrong answer."""


# -- Measuring -------------------------------------------------------------------------


class Timing(NamedTuple):
    """One timed loop, and the CPU time the server child used meanwhile."""

    seconds: float
    server_cpu: Optional[float] = None


class Section(NamedTuple):
    """One comparison: loop name -> one Timing per round, shown as count/s, ms or s (``unit``)."""

    title: str
    unit: str
    count: int
    loops: dict[str, list[Timing]]

    def values(self, loop: str) -> list[float]:
        if self.unit.endswith("/s"):
            return [self.count / timing.seconds for timing in self.loops[loop]]
        return [timing.seconds * (1000 if self.unit == "ms" else 1) for timing in self.loops[loop]]


@contextlib.contextmanager
def time_limit() -> Iterator[None]:
    """Fail the block with BenchError (from main's SIGALRM handler) after LOOP_LIMIT_S."""
    signal.alarm(LOOP_LIMIT_S)
    try:
        yield
    finally:
        signal.alarm(0)


def _expired(signum: int, frame: object) -> None:
    raise BenchError(f"a measurement ran longer than {LOOP_LIMIT_S} s")


def timed(loop: Callable[[], int], expected: int, server: Optional[BenchServer] = None) -> Timing:
    """Time a loop that returns how many messages or calls it handled; check the count."""
    cpu_before = server.cpu_seconds() if server else None
    with time_limit():
        started = time.perf_counter()
        count = loop()
        seconds = time.perf_counter() - started
    if count != expected:
        raise BenchError(f"a loop handled {count:,} messages or calls, expected {expected:,}")
    cpu_after = server.cpu_seconds() if server else None
    return Timing(seconds, None if cpu_before is None or cpu_after is None else cpu_after - cpu_before)


def rotate_rounds(rounds: int, loops: dict[str, Callable[[], Timing]], say: Callable[[str], None],
                  what: str) -> dict[str, list[Timing]]:
    """Run every loop once per round, starting one loop later each round."""
    names = list(loops)
    results: dict[str, list[Timing]] = {name: [] for name in names}
    for index in range(rounds):
        say(f"{what}: round {index + 1} of {rounds}")
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            results[name].append(loops[name]())
    return results


# -- Server child ----------------------------------------------------------------------


def message_text(shape: str, size: int) -> str:
    """A JSON message of exactly ``size`` bytes, with ID_PLACEHOLDER as its id.

    ``event``: a step.progress event, log lines as dicts of scalars; ``book``: an order book
    snapshot, ``[price, size]`` arrays on both sides.
    """
    def build(items: int, pad: str) -> dict:
        if shape == "event":
            lines = [{"seq": n, "level": "info", "text": "agent: checked the plan against goal 0000 of the brief"}
                     for n in range(items)]
            data: dict = {"step": "step_002", "progress": 0.5, "lines": lines, "note": pad}
            return {"type": "step.progress", "id": ID_PLACEHOLDER, "data": data}
        levels = [[round(64_000 + 0.25 * n, 2), round(0.001 * (n % 997 + 1), 3)] for n in range(items)]
        data = {"symbol": "BTC-USD", "bids": levels[::2], "asks": levels[1::2], "note": pad}
        return {"type": "book.snapshot", "id": ID_PLACEHOLDER, "data": data}

    low, high = 0, size
    while low < high:  # the most items that fit
        middle = (low + high + 1) // 2
        low, high = (middle, high) if len(json.dumps(build(middle, ""))) <= size else (low, middle - 1)
    text = json.dumps(build(low, "x" * (size - len(json.dumps(build(low, ""))))))
    if len(text) != size:
        raise BenchError(f"cannot build a {size}-byte {shape} message")
    return text


def encode_stream(count: int, shape: str, size: int) -> bytes:
    """``count`` server text frames, each message with its own id (the client drops repeats)."""
    protocol, text = FrameProtocol(client=False, extensions=[]), message_text(shape, size)
    return b"".join(protocol.send_data(text.replace(ID_PLACEHOLDER, f"{index:014d}")) for index in range(count))


class _ApiHandler(BaseHTTPRequestHandler):
    """GET the run (a pre-encoded body); POST a ticket whose wsUrl names the stream to send."""

    protocol_version = "HTTP/1.1"  # keep-alive
    disable_nagle_algorithm = True
    wbufsize = 64 * KIB  # status line, headers and body leave in one send

    def do_GET(self) -> None:
        self._reply(self.server.run_body if self.path == RUN_PATH else None)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        match = re.fullmatch(rf"/api/projects/{PROJECT_ID}/playbook-runs/(\w+)/ws-ticket", self.path)
        ws_url = f"ws://{HOST}:{self.server.ws_port}/ws/{match.group(1) if match else ''}?ticket=bench-ticket"
        self._reply(json.dumps({"ticket": "bench-ticket", "wsUrl": ws_url}).encode() if match else None)

    def _reply(self, body: Optional[bytes]) -> None:
        status = 200 if body else 404
        if self.headers.get("Authorization") != f"Bearer {API_KEY}":
            status, body = 401, b'{"error": "unauthorized"}'
        body = body or b'{"error": "not_found"}'
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: a line per request would cost more than answering it."""


class _BlastHandler(socketserver.BaseRequestHandler):
    """Accept the upgrade with wsproto, send the whole stream in one sendall, close with 1000."""

    def handle(self) -> None:
        sock, connection = self.request, WSConnection(ConnectionType.SERVER)
        sock.settimeout(LOOP_LIMIT_S)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        request = _next_ws_event(sock, connection)
        frames = self.server.streams.get(request.target.partition("?")[0].rpartition("/")[2]) if request else None
        if frames is None:
            sock.sendall(connection.send(RejectConnection(status_code=404)))
            return
        sock.sendall(connection.send(AcceptConnection()))
        sock.sendall(frames)
        sock.sendall(connection.send(CloseConnection(code=1000)))
        _next_ws_event(sock, connection)  # the client's close frame, or the end of its stream


def _next_ws_event(sock: socket.socket, connection: WSConnection) -> Optional[object]:
    """Read until wsproto has an event; None at the end of the stream."""
    while True:
        for event in connection.events():
            return event
        data = sock.recv(64 * KIB)
        if not data:
            return None
        connection.receive_data(data)


def serve(spec: str) -> int:
    """The server child: pin, encode every stream, serve, print the ports, exit when stdin closes."""
    plan = json.loads(spec)
    if plan["cpu"] is not None:
        os.sched_setaffinity(0, {plan["cpu"]})
    blaster = socketserver.ThreadingTCPServer((HOST, 0), _BlastHandler)
    blaster.daemon_threads = True
    blaster.streams = {name: encode_stream(plan[name], *WORKLOADS[name]) for name in WORKLOADS}
    api = ThreadingHTTPServer((HOST, 0), _ApiHandler)
    api.ws_port, api.run_body = blaster.server_address[1], json.dumps({"run": SAMPLE_RUN}).encode()
    for server in (blaster, api):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    print(json.dumps({"http_port": api.server_address[1], "ws_port": blaster.server_address[1]}), flush=True)
    sys.stdin.buffer.read()  # returns when the parent closes our stdin, or dies
    return 0


class BenchServer(NamedTuple):
    """The running server child, seen from the measuring process."""

    pid: int
    http_port: int
    ws_port: int

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.http_port}/api"

    def cpu_seconds(self) -> Optional[float]:
        """CPU time of the whole child so far, all threads (Linux: its process CPU clock)."""
        try:
            return time.clock_gettime((~self.pid << 3) | 2)  # MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED)
        except (AttributeError, OSError):
            return None


@contextlib.contextmanager
def running_server(plan: Plan, cpu: Optional[int]) -> Iterator[BenchServer]:
    """Start the server child, wait for its ports, always stop it."""
    spec = json.dumps({"cpu": cpu, **{name: getattr(plan, name) for name in WORKLOADS}})
    # A session of its own, so Ctrl-C reaches only us and we stop the child in order.
    process = subprocess.Popen([sys.executable, os.path.abspath(__file__), "_serve", spec], cwd=HERE,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True)
    try:
        readable, _, _ = select.select([process.stdout], [], [], START_LIMIT_S)
        line = process.stdout.readline() if readable else b""
        if not line:
            raise BenchError(f"the server child was not ready within {START_LIMIT_S} s (exit code {process.poll()})")
        yield BenchServer(process.pid, **json.loads(line))
    finally:
        process.stdin.close()
        process.stdout.close()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# -- Streams ---------------------------------------------------------------------------


def measure_stream(server: BenchServer, plan: Plan, name: str, say: Callable[[str], None]) -> dict[str, Section]:
    """Messages/s of iter_run_events and of websocket-client loops, on one workload."""
    (shape, size), count, url = WORKLOADS[name], getattr(plan, name), f"ws://{HOST}:{server.ws_port}/ws/{name}"
    with rakerone.Client(api_key=API_KEY, base_url=server.base_url) as client:
        loops = {RAKERONE: lambda: read_with_rakerone(client, name), TUNED: lambda: read_tuned(url)}
        if name == "small":  # ~25x slower on 64 KiB messages: it would dominate the run
            loops[DEFAULTS] = lambda: read_with_defaults(url)
        timings = rotate_rounds(plan.rounds, {loop: (lambda read=read: timed(read, count, server))
                                              for loop, read in loops.items()}, say, f"stream {name}")
    kind = "event-shaped" if shape == "event" else "list-heavy"
    return {name: Section(f"{name}: {count:,} messages of {size:,} B, {kind}", "msgs/s", count, timings)}


def read_with_rakerone(client: rakerone.Client, stream: str) -> int:
    """The client under test: iterate the events until the server closes with 1000."""
    with contextlib.closing(client.iter_run_events(PROJECT_ID, stream)) as events:
        return sum(1 for _event in events)


def read_tuned(url: str) -> int:
    """websocket-client tuned: no UTF-8 check in Python (json.loads checks), bytes to json.loads.

    ``_last`` holds the previous message while the next is decoded, as ``for event in`` does.
    """
    ws = websocket.create_connection(url, skip_utf8_validation=True)
    count = 0
    try:
        while True:
            opcode, data = ws.recv_data()
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                return count
            _last = json.loads(data)
            count += 1
    finally:
        ws.close()


def read_with_defaults(url: str) -> int:
    """websocket-client as a user first writes it: default options, recv() and json.loads, keeping the last."""
    ws = websocket.create_connection(url)
    count = 0
    try:
        while True:
            message = ws.recv()
            if not ws.connected:  # recv() returns "" for the close frame, and disconnects
                return count
            _last = json.loads(message)
            count += 1
    finally:
        ws.close()


# -- HTTP ------------------------------------------------------------------------------


def measure_http(server: BenchServer, plan: Plan, say: Callable[[str], None]) -> dict[str, Section]:
    """Sequential calls/s: get_run, a reused requests Session, requests.get, http.client."""
    url, headers = server.base_url + RUN_PATH.removeprefix("/api"), {"Authorization": f"Bearer {API_KEY}"}
    with rakerone.Client(api_key=API_KEY, base_url=server.base_url) as client, requests.Session() as session, \
            contextlib.closing(http.client.HTTPConnection(HOST, server.http_port)) as connection:
        calls = {
            GET_RUN: lambda: client.get_run(PROJECT_ID, RUN_ID).id,
            SESSION: lambda: session.get(url, headers=headers).json()["run"]["id"],
            NAIVE: lambda: requests.get(url, headers=headers).json()["run"]["id"],
            FLOOR: lambda: _get_with_http_client(connection, headers),
        }
        for name, call in calls.items():  # untimed: opens the keep-alive connections, checks the answer
            if call() != RUN_ID:
                raise BenchError(f"{name} did not read the run")
        loops = {name: (lambda call=call: timed(lambda: _repeat(call, plan.http_calls), plan.http_calls, server))
                 for name, call in calls.items()}
        timings = rotate_rounds(plan.rounds, loops, say, f"get_run ({plan.http_calls:,} calls)")
    return {"http": Section(f"{plan.http_calls:,} sequential get_run of a ~1 KB run", "calls/s", plan.http_calls,
                            timings)}


def _get_with_http_client(connection: http.client.HTTPConnection, headers: dict) -> str:
    connection.request("GET", RUN_PATH, headers=headers)
    return json.loads(connection.getresponse().read())["run"]["id"]


def _repeat(call: Callable[[], object], times: int) -> int:
    for _ in range(times):
        call()
    return times


# -- Cold import -----------------------------------------------------------------------


def measure_imports(plan: Plan, say: Callable[[str], None]) -> dict[str, Section]:
    """Wall time of fresh ``python -c`` processes, with bytecode cached as after an install."""
    env = {name: value for name, value in os.environ.items() if name != "PYTHONDONTWRITEBYTECODE"}
    for statement in IMPORTS:  # untimed: writes the bytecode, warms the page cache
        _run_python(statement, env)
    loops = {statement: (lambda statement=statement: Timing(_run_python(statement, env))) for statement in IMPORTS}
    timings = rotate_rounds(plan.import_rounds, loops, say, "cold import")
    return {"import": Section("cold import: a fresh `python -c`, wall time", "ms", 1, timings)}


def _run_python(statement: str, env: dict[str, str]) -> float:
    """Seconds from spawning ``python -c statement`` to its exit (cwd: this rakerone.py comes first)."""
    started = time.perf_counter()
    with time_limit():  # not run(timeout=): its wait polls, rounding every time up
        subprocess.run([sys.executable, "-c", statement], cwd=HERE, env=env, check=True,
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


# -- Recovery --------------------------------------------------------------------------


def measure_recovery(plan: Plan, say: Callable[[str], None]) -> dict[str, Section]:
    """Seconds to resume after a dropped connection, and to give up a silent peer."""
    timings: dict[str, list[Timing]] = {"resume_s": [], "dead_detect_s": []}
    for index in range(plan.recovery_rounds):
        say(f"recovery: round {index + 1} of {plan.recovery_rounds}")
        with time_limit():
            timings["resume_s"].append(Timing(_time_resume()))
            timings["dead_detect_s"].append(Timing(_time_dead_detect()))
    return {"recovery": Section("recovery against rakerone_fake.FakeRakerOne", "s", 1, timings)}


@contextlib.contextmanager
def _fake_stream(**options: float) -> Iterator[tuple]:
    """A FakeRakerOne and a stream of its run, whose first event has arrived."""
    with FakeRakerOne(api_key=API_KEY) as fake, rakerone.Client(api_key=API_KEY, base_url=fake.base_url) as client:
        fake.add_run(PROJECT_ID, {"id": RUN_ID, "status": "running"})
        fake.emit_run_event(PROJECT_ID, RUN_ID, {"type": "step.progress", "id": "before"})
        with contextlib.closing(client.iter_run_events(PROJECT_ID, RUN_ID, idle_timeout=15, **options)) as events:
            if next(events).id != "before":
                raise BenchError("the fake's first event did not arrive")
            yield fake, events


def _time_resume() -> float:
    """From fake.drop_streams() to the event emitted right after it, through a reconnect."""
    with _fake_stream() as (fake, events):
        started = time.perf_counter()
        fake.drop_streams()
        fake.emit_run_event(PROJECT_ID, RUN_ID, {"type": "step.progress", "id": "after"})
        event = next(events)
        elapsed = time.perf_counter() - started
    if event.id != "after":
        raise BenchError(f"after the drop the stream yielded {event.id!r}, not the new event")
    return elapsed


def _time_dead_detect() -> float:
    """From fake.stop_answering_pings() to the client closing that connection (ping 1 s + 1 s).

    The heartbeat runs while the stream is waited on, so a thread watches the fake, then
    revives it and emits an event that ends the wait.
    """
    detected: list[float] = []
    with _fake_stream(ping_interval=1, ping_timeout=1) as (fake, events):
        def watch() -> None:
            deadline = started + 10
            while fake.live_connections and time.perf_counter() < deadline:
                time.sleep(0.001)
            if not fake.live_connections:
                detected.append(time.perf_counter() - started)
            fake.resume_answering_pings()
            fake.emit_run_event(PROJECT_ID, RUN_ID, {"type": "step.progress", "id": "after"})

        started = time.perf_counter()
        fake.stop_answering_pings()
        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            next(events)
        finally:
            watcher.join()
    if not detected:
        raise BenchError("the silent peer was not given up within 10 s")
    return detected[0]


# -- Report ----------------------------------------------------------------------------


def run_benchmark(plan: Plan, cpus: tuple, say: Callable[[str], None]) -> dict:
    """Measure every section; a failed one is recorded in ``errors`` and the others still run."""
    sections: dict[str, Section] = {}
    errors: list[str] = []

    def attempt(what: str, measure: Callable[[], dict[str, Section]]) -> None:
        try:
            sections.update(measure())
        except Exception as exc:  # report it, go on, exit 1 at the end
            traceback.print_exc(file=sys.stderr)
            errors.append(f"{what}: {type(exc).__name__}: {exc}")

    try:
        with running_server(plan, cpus[0]) as server:
            for name in WORKLOADS:
                attempt(f"stream {name}", lambda name=name: measure_stream(server, plan, name, say))
            attempt("http", lambda: measure_http(server, plan, say))
    except Exception as exc:  # the server child did not start
        errors.append(f"server: {type(exc).__name__}: {exc}")
    attempt("import", lambda: measure_imports(plan, say))
    attempt("recovery", lambda: measure_recovery(plan, say))
    figures = {figure.name: judge(figure, sections) for figure in FIGURES}
    return {"plan": plan._asdict(), "machine": machine_facts(cpus), "sections": sections, "figures": figures,
            "errors": errors}


def judge(figure: Figure, sections: dict[str, Section]) -> dict:
    """A figure's median [min-max] over rounds and its PASS / MISS / info mark (ERROR if not measured)."""
    judged = {"median": None, "min": None, "max": None, "unit": figure.unit,
              "target": f"{figure.direction} {figure.target:g}" if figure.direction else None, "status": "ERROR"}
    section = sections.get(figure.section)
    if section is None:
        return judged
    over = [timing.seconds for timing in section.loops[figure.over]]
    under = [timing.seconds for timing in section.loops[figure.under]] if figure.under else [1.0] * len(over)
    judged.update(summarize([top / bottom for top, bottom in zip(over, under)]))
    met = judged["median"] >= figure.target if figure.direction == ">=" else judged["median"] <= figure.target
    judged["status"] = ("PASS" if met else "MISS") if figure.direction else "info"
    return judged


def summarize(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def machine_facts(cpus: tuple) -> dict:
    libraries = ("requests", "urllib3", "websocket-client", "attrs")
    return {"python": f"{platform.python_implementation()} {platform.python_version()}",
            "platform": platform.platform(), "cpu_count": os.cpu_count(), "rakerone": rakerone.__version__,
            "libraries": {name: importlib.metadata.version(name) for name in libraries},
            "pinning": f"servers on CPU {cpus[0]}, measuring process on CPU {cpus[1]}" if cpus[0] is not None
            else "not pinned (needs os.sched_setaffinity and 2 CPUs)"}


def report_json(report: dict) -> str:
    sections = {name: {"title": section.title, "unit": section.unit, "count": section.count,
                       "loops": {loop: [timing._asdict() for timing in timings]
                                 for loop, timings in section.loops.items()}}
                for name, section in report["sections"].items()}
    return json.dumps(dict(report, sections=sections), indent=2)


def report_table(report: dict) -> str:
    machine, plan = report["machine"], report["plan"]
    lines = [f"rakerone {machine['rakerone']} benchmark: {plan['name']} run, {plan['rounds']} round(s); "
             f"values are median [min-max] over rounds",
             f"{machine['python']} on {machine['platform']}, {machine['cpu_count']} CPUs; {machine['pinning']}",
             "; ".join(f"{name} {version}" for name, version in machine["libraries"].items()),
             "server CPU: the server child's share of its core during the loop"]
    for section in report["sections"].values():
        lines += ["", f"{section.title} ({section.unit})"]
        for loop, timings in section.loops.items():
            busy = [t.server_cpu / t.seconds for t in timings if t.server_cpu is not None]
            server = f"server CPU {statistics.median(busy):4.0%}" if busy else ""
            lines.append(f"  {loop:<36}{_spread(summarize(section.values(loop)), section.unit):>32}  {server}")
    lines += ["", "Figures (ratios > 1: rakerone faster; import_vs_deps is a time ratio, lower is better)",
              f"  {'figure':<26}{'median [min-max]':>24}{'unit':>8}{'target':>10}{'result':>8}"]
    for name, figure in report["figures"].items():
        shown = "-" if figure["median"] is None else _spread(figure, figure["unit"])
        lines.append(f"  {name:<26}{shown:>24}{figure['unit']:>8}{figure['target'] or '-':>10}{figure['status']:>8}")
    if report["errors"]:
        lines += ["", "ERRORS (exit status 1):"] + [f"  {error}" for error in report["errors"]]
    lines += ["", f"wall time: {report['wall_s']:.1f} s"]
    return "\n".join(lines)


def _spread(summary: dict, unit: str) -> str:
    """``median [min-max]``, with as many decimals as the unit deserves."""
    digits = {"s": 3, "ms": 1, "x rate": 3, "x time": 3}.get(unit, 0)
    return "{median:,.{d}f} [{min:,.{d}f}-{max:,.{d}f}]".format(d=digits, **summary)


# -- Command line ----------------------------------------------------------------------


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_serve"]:
        return serve(argv[1])
    parser = argparse.ArgumentParser(description="Benchmark rakerone on 127.0.0.1 (see the module docstring).")
    parser.add_argument("--quick", action="store_true", help="one small smoke round (what CI runs)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--rounds", type=int, help="override the number of rounds of the comparisons")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    plan = plan._replace(rounds=args.rounds or plan.rounds)
    signal.signal(signal.SIGALRM, _expired)
    cpus = _choose_cpus()
    if cpus[1] is not None:
        os.sched_setaffinity(0, {cpus[1]})  # children (imports) inherit it; the server child moves
    started = time.perf_counter()
    try:
        report = run_benchmark(plan, cpus, lambda message: print(f"bench: {message}", file=sys.stderr, flush=True))
    except KeyboardInterrupt:
        print("bench: interrupted; the server child is stopped", file=sys.stderr)
        return 130
    report["wall_s"] = time.perf_counter() - started
    print(report_json(report) if args.json else report_table(report))
    return 1 if report["errors"] else 0


def _choose_cpus() -> tuple:
    """(server CPU, measuring CPU), or (None, None) where pinning is not possible."""
    available = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_setaffinity") else []
    return (available[0], available[1]) if len(available) >= 2 else (None, None)


if __name__ == "__main__":
    sys.exit(main())
