"""Benchmark rakerone against the libraries under it, on 127.0.0.1 only.

Run it from a clone, in a virtualenv made with ``pip install -e '.[test]'``::

    python bench_rakerone.py            # the full run, printed as a table (about 90 s)
    python bench_rakerone.py --json     # the same, as one JSON object on stdout
    python bench_rakerone.py --quick    # one small smoke round, as CI runs it

Each comparison runs in one invocation, against the same server and the same messages,
in rounds whose order rotates; a figure is the median of its per-round ratios, with the
min-max spread. Ratios above 1 mean rakerone is faster, except ``import_vs_deps`` (a time
ratio: lower is better). The servers run in a child process pinned to one core and the
measuring process on the other; WebSocket frames are encoded once, before any timing, and
leave in one ``sendall``. A raw socket reader (the transport ceiling), an ``http.client``
loop (the floor of the HTTP stack) and the server's CPU use next to every loop show how
far the servers are from being the bottleneck.

Exit status: 0 when every measurement ran, whether or not the targets were met; 1 when a
measurement failed; 130 on Ctrl-C. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import http.client
import http.server
import importlib.metadata
import itertools
import json
import os
import platform
import re
import select
import socket
import socketserver
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from typing import Callable, Dict, Iterator, List, Optional

import requests
import websocket
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, RejectConnection, Request
from wsproto.frame_protocol import FrameProtocol

import rakerone

# -- Settings --------------------------------------------------------------------------

HERE = os.path.dirname(os.path.abspath(__file__))
HOST = "127.0.0.1"
API_KEY = "bench-key"
PROJECT_ID = "bench"
RUN_ID = "run_1"
RUN_PATH = f"/projects/{PROJECT_ID}/playbook-runs/{RUN_ID}"  # below the base URL's /api
TICKET_PATH = re.compile(rf"/api/projects/{PROJECT_ID}/playbook-runs/(\w+)/ws-ticket")

SMALL_BYTES = 200
LARGE_BYTES = 64 * 1024
ID_PLACEHOLDER = "#" * 14  # every event id has this width, so every message of a size is that size
RAW_READ_BYTES = 256 * 1024

LOOP_TIME_LIMIT = 120.0  # a timed loop still running then is a failed measurement
SERVER_START_LIMIT = 180.0  # encoding a million frames takes a few seconds
SERVER_LIFETIME_LIMIT = 3600.0  # the server child exits by itself after this
CHILD_TIME_LIMIT = 300.0  # a memory or import child still running then is killed
#: sendall's timeout bounds the whole send (Python >= 3.5), so it is the slowest reader's limit.
SERVER_SOCKET_TIMEOUT = CHILD_TIME_LIMIT
STREAM_IDLE_LIMIT = 15.0  # idle_timeout of the streams in the memory and recovery rounds
MEMORY_WARMUP_EVENTS = 1_000
MB = 1_000_000

#: Figure -> (comparison, threshold). Recovery figures have no target: they are reported.
TARGETS = {
    "stream_small_vs_default": (">=", 1.0),
    "stream_small_vs_tuned": (">=", 0.95),
    "stream_large_vs_default": (">=", 1.0),
    "stream_large_vs_tuned": (">=", 0.95),
    "get_run_vs_session": (">=", 0.9),
    "get_run_vs_naive": (">=", 3.0),
    "import_vs_deps": ("<=", 1.1),
    "rss_growth_mb": ("<", 10.0),
    "resume_s": None,
    "dead_detect_s": None,
}
LIBRARIES = ("requests", "urllib3", "websocket-client", "attrs", "wsproto", "h11", "werkzeug",
             "simple-websocket")


@dataclasses.dataclass(frozen=True)
class Plan:
    """How much to measure: rounds, and the size of each round."""

    name: str
    rounds: int
    small_events: int
    large_events: int
    http_calls: int
    import_rounds: int
    memory_events: int
    memory_rounds: int
    recovery_rounds: int


FULL = Plan(name="full", rounds=5, small_events=50_000, large_events=256, http_calls=2_000,
            import_rounds=15, memory_events=1_000_000, memory_rounds=2, recovery_rounds=5)
# Streams long enough that connecting (~1 ms: ticket, upgrade) stays a small share of a round.
QUICK = Plan(name="quick", rounds=1, small_events=20_000, large_events=256, http_calls=300,
             import_rounds=3, memory_events=100_000, memory_rounds=1, recovery_rounds=1)


class BenchError(Exception):
    """A measurement could not be made (or gave a wrong answer)."""


# -- Machine facts ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Cores:
    """Which CPU the server child and the measuring process are pinned to, if any."""

    server: Optional[int]
    client: Optional[int]
    note: str


def choose_cores() -> Cores:
    """Pick one CPU for the servers and another for the measuring process."""
    if not hasattr(os, "sched_setaffinity"):
        return Cores(None, None, "not pinned: os.sched_setaffinity is not available here")
    available = sorted(os.sched_getaffinity(0))
    if len(available) < 2:
        return Cores(None, None, f"not pinned: only CPU {available} is available")
    server, client = available[0], available[1]
    return Cores(server, client, f"os.sched_setaffinity: servers on CPU {server}, the measuring "
                                 f"process and its children on CPU {client}")


def pin(cpu: Optional[int]) -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})


def machine_facts(cores: Cores) -> dict:
    return {
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "affinity": cores.note,
        "rakerone": {"version": rakerone.__version__, "file": rakerone.__file__,
                     "sha256": _file_digest(rakerone.__file__), "git": _git_state()},
        "libraries": {name: _library_version(name) for name in LIBRARIES},
        "proxy_variables": sorted(k for k in os.environ if k.lower().endswith("_proxy")),
    }


def _library_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _file_digest(path: str) -> str:
    with open(path, "rb") as file:
        return hashlib.sha256(file.read()).hexdigest()[:12]


def _git_state() -> str:
    """The commit rakerone.py was measured at, and whether it had local changes."""
    try:
        commit = subprocess.run(["git", "-C", HERE, "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        changes = subprocess.run(["git", "-C", HERE, "status", "--porcelain", "rakerone.py"],
                                 capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + (" with local changes to rakerone.py" if changes else "")


# -- Measuring helpers -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Spread:
    """The median of some values, with their minimum and maximum."""

    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: List[float]) -> Spread:
        return cls(statistics.median(values), min(values), max(values))

    def as_dict(self) -> dict:
        return {"median": self.median, "min": self.low, "max": self.high}


@dataclasses.dataclass(frozen=True)
class Timing:
    """One timed loop: how many events or calls, in how long, and the server's CPU meanwhile."""

    count: int
    seconds: float
    server_cpu: Optional[float] = None

    @property
    def rate(self) -> float:
        return self.count / self.seconds

    @property
    def server_busy(self) -> Optional[float]:
        """The share of its core the server used during the loop."""
        return None if self.server_cpu is None else self.server_cpu / self.seconds


def timed(count_loop: Callable[[], int], server: Optional[BenchServer] = None) -> Timing:
    """Run a loop that returns its count, under a watchdog that kills the server if it hangs."""
    cpu_before = server.cpu_seconds() if server else None
    with _watchdog(LOOP_TIME_LIMIT, server.kill if server else None):
        started = time.perf_counter()
        count = count_loop()
        seconds = time.perf_counter() - started
    cpu_after = server.cpu_seconds() if server else None
    cpu = None if cpu_before is None or cpu_after is None else cpu_after - cpu_before
    return Timing(count, seconds, cpu)


@contextlib.contextmanager
def _watchdog(seconds: float, abort: Optional[Callable[[], None]], what: str = "a timed loop") -> Iterator[None]:
    """Call ``abort`` (which makes the block fail fast) if the block outlives ``seconds``."""
    fired = threading.Event()

    def expire() -> None:
        fired.set()
        if abort is not None:
            abort()

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()
    try:
        yield
    except Exception as exc:
        if fired.is_set():
            raise BenchError(f"{what} took longer than {seconds:g} s and was aborted") from exc
        raise
    finally:
        timer.cancel()
        timer.join()
    if fired.is_set():
        raise BenchError(f"{what} took longer than {seconds:g} s")


def interleaved(rounds: int, loops: Dict[str, Callable[[], Timing]],
                say: Callable[[str], None], what: str) -> Dict[str, List[Timing]]:
    """Run every loop once per round, in an order that rotates from round to round."""
    names = list(loops)
    results: Dict[str, List[Timing]] = {name: [] for name in names}
    for index in range(rounds):
        say(f"{what}: round {index + 1} of {rounds}")
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            results[name].append(loops[name]())
    return results


def ratios(numerators: List[Timing], denominators: List[Timing]) -> Spread:
    """Per-round rate ratios (same round, same server, same messages), summarised."""
    return Spread.of([top.rate / bottom.rate for top, bottom in zip(numerators, denominators)])


def expect_count(what: str, got: int, expected: int) -> int:
    if got != expected:
        raise BenchError(f"{what}: got {got:,} events or calls, expected {expected:,}")
    return got


# -- Bench server (child process) ------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class EncodedStream:
    """A whole stream's WebSocket frames, encoded once, sent with one sendall."""

    frames: bytes
    events: int
    payload_bytes: int


def message_template(size: int) -> str:
    """A ``step.progress`` event of exactly ``size`` bytes of JSON, ID_PLACEHOLDER as its id."""
    line = {"seq": 0, "level": "info", "text": "agent: checked the plan against goal 0000 of the brief"}
    data = {"step": "step_002", "progress": 0.5, "lines": [], "note": ""}
    message = {"type": "step.progress", "id": ID_PLACEHOLDER, "data": data}
    data["lines"] = [dict(line, seq=n) for n in range(size // len(json.dumps(line)))]
    while data["lines"] and len(json.dumps(message)) > size:
        data["lines"].pop()
    data["note"] = "x" * (size - len(json.dumps(message)))
    template = json.dumps(message)
    if len(template) != size:
        raise BenchError(f"cannot build a {size}-byte message")
    return template


def encode_stream(prefix: str, count: int, size: int) -> EncodedStream:
    """Frame ``count`` events with unique ids (the client drops repeated ids) as text frames."""
    protocol = FrameProtocol(client=False, extensions=[])
    template = message_template(size)
    frames = [
        protocol.send_data(template.replace(ID_PLACEHOLDER, f"{prefix}-{index:012d}"))
        for index in range(count)
    ]
    return EncodedStream(b"".join(frames), count, count * size)


class _QuietAboutLeavers:
    """socketserver mix-in: say nothing when a client goes away (an aborted or
    interrupted loop), print any other error of a request."""

    def handle_error(self, request: object, client_address: object) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            print(f"bench server: {traceback.format_exc(limit=2)}", file=sys.stderr)


class _ApiHandler(http.server.BaseHTTPRequestHandler):
    """GET the run (a pre-encoded body) and POST ws-tickets pointing at the blaster."""

    protocol_version = "HTTP/1.1"  # keep-alive
    disable_nagle_algorithm = True
    wbufsize = 64 * 1024  # status line, headers and body leave in one send

    def do_GET(self) -> None:
        if self.path == "/api" + RUN_PATH:
            self._reply(200, self.server.run_body)
        else:
            self._reply(404, b'{"error": "not_found"}')

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        match = TICKET_PATH.fullmatch(self.path)
        if match is None:
            self._reply(404, b'{"error": "not_found"}')
            return
        ws_url = f"ws://{HOST}:{self.server.ws_port}/ws/{match.group(1)}?ticket=bench-ticket"
        self._reply(200, json.dumps({"ticket": "bench-ticket", "wsUrl": ws_url}).encode())

    def _reply(self, status: int, body: bytes) -> None:
        if self.headers.get("Authorization") != f"Bearer {API_KEY}":
            status, body = 401, b'{"error": "unauthorized"}'
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: one line per request would cost more than answering it."""


class _ApiServer(_QuietAboutLeavers, http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, ws_port: int, run: dict) -> None:
        super().__init__((HOST, 0), _ApiHandler)
        self.ws_port = ws_port
        self.run_body = json.dumps({"run": run}).encode()


class _BlastHandler(socketserver.BaseRequestHandler):
    """Accept the upgrade with wsproto, send the whole stream, close with 1000.

    ``/ws/<stream>`` then waits for the client's close frame; ``/raw/<stream>`` (the
    transport ceiling's reader sends no close) ends the TCP stream instead.
    """

    def handle(self) -> None:
        sock, connection = self.request, WSConnection(ConnectionType.SERVER)
        sock.settimeout(SERVER_SOCKET_TIMEOUT)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        request = _next_ws_event(sock, connection)
        kind, _, name = request.target.split("?")[0].strip("/").partition("/") if request else ("", "", "")
        stream = self.server.streams.get(name)
        if stream is None or kind not in ("ws", "raw"):
            sock.sendall(connection.send(RejectConnection(status_code=404)))
            return
        sock.sendall(connection.send(AcceptConnection()))
        sock.sendall(stream.frames)
        sock.sendall(connection.send(CloseConnection(code=1000)))
        if kind == "raw":
            sock.shutdown(socket.SHUT_WR)
        _next_ws_event(sock, connection)  # the client's close frame, or the end of its stream


def _next_ws_event(sock: socket.socket, connection: WSConnection) -> Optional[object]:
    """Read until wsproto has an event (None at the end of the stream); bounded."""
    for _ in range(1_000):
        for event in connection.events():
            return event
        data = sock.recv(65536)
        if not data:
            return None
        connection.receive_data(data)
    return None


class _BlastServer(_QuietAboutLeavers, socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, streams: Dict[str, EncodedStream]) -> None:
        super().__init__((HOST, 0), _BlastHandler)
        self.streams = streams


def serve(argv: List[str]) -> int:
    """The server child: encode the streams, serve, print the ports, exit on stdin EOF."""
    parser = argparse.ArgumentParser(prog="bench_rakerone.py _serve")
    parser.add_argument("--cpu", type=int)
    for name in ("small", "large", "memory"):
        parser.add_argument(f"--{name}", type=int, required=True)
    args = parser.parse_args(argv)
    pin(args.cpu)
    started = time.perf_counter()
    streams = {
        "small": encode_stream("s", args.small, SMALL_BYTES),
        "large": encode_stream("l", args.large, LARGE_BYTES),
        "memory": encode_stream("m", args.memory, SMALL_BYTES),
    }
    encode_s = time.perf_counter() - started
    with _serving(streams) as (api, blaster):
        ready = {"http_port": api.server_port, "ws_port": blaster.server_address[1], "encode_s": encode_s,
                 "streams": {name: {"events": s.events, "payload_bytes": s.payload_bytes,
                                    "frame_bytes": len(s.frames)} for name, s in streams.items()}}
        try:
            print(json.dumps(ready), flush=True)
        except BrokenPipeError:  # the parent is gone already; nothing to flush at exit either
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 1
        _wait_for_parent(SERVER_LIFETIME_LIMIT)
    return 0


@contextlib.contextmanager
def _serving(streams: Dict[str, EncodedStream]) -> Iterator[tuple]:
    """Run the WebSocket blaster and the HTTP API on threads; stop both on exit."""
    from rakerone_fake import SAMPLE_RUN

    blaster = _BlastServer(streams)
    api = _ApiServer(blaster.server_address[1], SAMPLE_RUN)
    threads = [threading.Thread(target=server.serve_forever, daemon=True) for server in (blaster, api)]
    for thread in threads:
        thread.start()
    try:
        yield api, blaster
    finally:
        for server in (blaster, api):
            server.shutdown()
            server.server_close()
        for thread in threads:
            thread.join()


def _wait_for_parent(limit: float) -> None:
    """Return when the parent closes our stdin (or dies), or after ``limit`` seconds."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        readable, _, _ = select.select([sys.stdin], [], [], deadline - time.monotonic())
        if readable and not os.read(sys.stdin.fileno(), 1024):
            return


# -- Bench server (parent side) --------------------------------------------------------


class BenchServer:
    """The running server child: its URLs, its streams, its CPU time."""

    def __init__(self, process: subprocess.Popen, info: dict) -> None:
        self._process = process
        self.http_port: int = info["http_port"]
        self.ws_port: int = info["ws_port"]
        self.encode_s: float = info["encode_s"]
        #: name -> {"events", "payload_bytes", "frame_bytes"}
        self.streams: dict = info["streams"]

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.http_port}/api"

    def ws_url(self, stream: str) -> str:
        return f"ws://{HOST}:{self.ws_port}/ws/{stream}"

    def cpu_seconds(self) -> Optional[float]:
        """CPU time of the whole server process so far, all its threads (Linux only).

        Read from the process's CPU clock, the id glibc's clock_getcpuclockid(pid) makes
        (nanoseconds), else from /proc/PID/stat (clock ticks, 10 ms).
        """
        pid = self._process.pid
        try:
            return time.clock_gettime((~pid << 3) | 2)  # Linux: MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED)
        except (AttributeError, OSError):
            pass
        try:
            with open(f"/proc/{pid}/stat") as file:
                fields = file.read().rpartition(")")[2].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def kill(self) -> None:
        self._process.kill()


@contextlib.contextmanager
def running_server(plan: Plan, cores: Cores) -> Iterator[BenchServer]:
    """Start the server child, wait for its ports, and always stop it."""
    command = [sys.executable, os.path.abspath(__file__), "_serve", f"--small={plan.small_events}",
               f"--large={plan.large_events}", f"--memory={plan.memory_events}"]
    if cores.server is not None:
        command.append(f"--cpu={cores.server}")
    # A session of its own: Ctrl-C reaches only us, and we stop the child in order.
    process = subprocess.Popen(command, cwd=HERE, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               start_new_session=True)
    try:
        yield BenchServer(process, _read_ready_line(process, SERVER_START_LIMIT))
    finally:
        stop_process(process)


def _read_ready_line(process: subprocess.Popen, limit: float) -> dict:
    readable, _, _ = select.select([process.stdout], [], [], limit)
    line = process.stdout.readline() if readable else b""
    if not line:
        ended = process.poll()
        raise BenchError(f"the bench server did not start within {limit:g} s" if ended is None
                         else f"the bench server exited with code {ended} before it was ready")
    return json.loads(line)


def stop_process(process: subprocess.Popen) -> None:
    """Close the child's stdin (its signal to exit), then terminate or kill it if it lingers."""
    for stream in (process.stdin, process.stdout):
        if stream is not None:
            stream.close()
    for stop in (lambda: None, process.terminate, process.kill):
        stop()
        try:
            process.wait(timeout=5)
            return
        except subprocess.TimeoutExpired:
            continue


# -- Stream throughput -----------------------------------------------------------------

STREAM_LOOPS = ("rakerone", "websocket-client defaults", "websocket-client tuned", "transport ceiling")


def measure_streams(server: BenchServer, plan: Plan, say: Callable[[str], None]) -> dict:
    """Events/s of iter_run_events, two websocket-client loops and a raw reader, per size."""
    with rakerone.Client(api_key=API_KEY, base_url=server.base_url) as client:
        return {size: _measure_stream(server, client, size, plan, say) for size in ("small", "large")}


def _measure_stream(server: BenchServer, client: rakerone.Client, name: str, plan: Plan,
                    say: Callable[[str], None]) -> Dict[str, List[Timing]]:
    info, url = server.streams[name], server.ws_url(name)
    expected = info["events"]

    def loop(read: Callable[[], int]) -> Callable[[], Timing]:
        return lambda: timed(lambda: expect_count(name, read(), expected), server)

    loops = {
        "rakerone": loop(lambda: read_with_rakerone(client, name, expected)),
        "websocket-client defaults": loop(lambda: read_with_defaults(url, expected)),
        "websocket-client tuned": loop(lambda: read_tuned(url, expected)),
        "transport ceiling": loop(lambda: drain_raw(server, name)),
    }
    return interleaved(plan.rounds, loops, say, f"stream {name} ({expected:,} events)")


def read_with_rakerone(client: rakerone.Client, stream: str, expected: int) -> int:
    """The client under test: iterate the run's events until the server closes with 1000."""
    count = 0
    events = client.iter_run_events(PROJECT_ID, stream)
    try:
        for _event in itertools.islice(events, expected + 1):
            count += 1
    finally:
        events.close()
    return count


def read_with_defaults(url: str, expected: int) -> int:
    """Baseline (a): websocket-client as a user would write it, default options."""
    ws = websocket.create_connection(url)
    count = 0
    try:
        for _ in range(expected + 1):
            message = ws.recv()
            if not ws.connected:  # recv() returns "" for the close frame and disconnects
                break
            json.loads(message)
            count += 1
    finally:
        ws.close()
    return count


def read_tuned(url: str, expected: int) -> int:
    """Baseline (b): websocket-client tuned: no UTF-8 check in Python, bytes to json.loads."""
    ws = websocket.create_connection(url, skip_utf8_validation=True)
    count = 0
    try:
        for _ in range(expected + 1):
            opcode, data = ws.recv_data()
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                break
            json.loads(data)
            count += 1
    finally:
        ws.close()
    return count


def drain_raw(server: BenchServer, stream: str) -> int:
    """The transport ceiling: upgrade (request made by wsproto), then count bytes, parse nothing.

    Returns the stream's event count once at least its frame bytes have arrived.
    """
    info = server.streams[stream]
    upgrade = WSConnection(ConnectionType.CLIENT).send(Request(host=f"{HOST}:{server.ws_port}",
                                                               target=f"/raw/{stream}"))
    buffer, received = bytearray(RAW_READ_BYTES), 0
    with socket.create_connection((HOST, server.ws_port), timeout=LOOP_TIME_LIMIT) as sock:
        sock.sendall(upgrade)
        for _ in range(info["frame_bytes"] + 2):  # every read but the last brings a byte or more
            size = sock.recv_into(buffer)
            if not size:
                break
            received += size
    if received < info["frame_bytes"]:
        raise BenchError(f"raw reader got {received:,} bytes of {stream}, expected {info['frame_bytes']:,}+")
    return info["events"]


# -- Request overhead ------------------------------------------------------------------

HTTP_LOOPS = ("rakerone get_run", "requests.Session().get", "requests.get", "http.client floor")


def measure_requests(server: BenchServer, plan: Plan, say: Callable[[str], None]) -> Dict[str, List[Timing]]:
    """Sequential calls/s: get_run, a requests Session, requests.get, and http.client."""
    url, headers = server.base_url + RUN_PATH, {"Authorization": f"Bearer {API_KEY}"}
    with contextlib.ExitStack() as stack:
        client = stack.enter_context(rakerone.Client(api_key=API_KEY, base_url=server.base_url))
        session = stack.enter_context(requests.Session())
        connection = http.client.HTTPConnection(HOST, server.http_port)
        stack.callback(connection.close)
        calls = {
            "rakerone get_run": lambda: client.get_run(PROJECT_ID, RUN_ID).id,
            "requests.Session().get": lambda: session.get(url, headers=headers).json()["run"]["id"],
            "requests.get": lambda: requests.get(url, headers=headers).json()["run"]["id"],
            "http.client floor": lambda: _get_with_http_client(connection, "/api" + RUN_PATH, headers),
        }
        _check_answers(calls)
        loops = {name: _call_loop(call, plan.http_calls, server) for name, call in calls.items()}
        return interleaved(plan.rounds, loops, say, f"get_run ({plan.http_calls:,} calls)")


def _get_with_http_client(connection: http.client.HTTPConnection, path: str, headers: dict) -> str:
    connection.request("GET", path, headers=headers)
    return json.loads(connection.getresponse().read())["run"]["id"]


def _check_answers(calls: Dict[str, Callable[[], str]]) -> None:
    """One untimed call each (opening the keep-alive connections): all must read the run."""
    from rakerone_fake import SAMPLE_RUN

    for name, call in calls.items():
        if call() != SAMPLE_RUN["id"]:
            raise BenchError(f"{name} did not read the run's id")


def _call_loop(call: Callable[[], object], calls: int, server: BenchServer) -> Callable[[], Timing]:
    def run() -> int:
        for _ in range(calls):
            call()
        return calls

    return lambda: timed(run, server)


# -- Cold import -----------------------------------------------------------------------

IMPORTS = {"rakerone": "import rakerone", "deps": "import requests, websocket, attrs", "bare": "pass"}


def measure_imports(plan: Plan, say: Callable[[str], None]) -> Dict[str, List[Timing]]:
    """Wall time of fresh ``python -c`` processes, interleaved (``bare`` runs ``pass``).

    Bytecode is cached, as on a user's machine, even under PYTHONDONTWRITEBYTECODE
    (else rakerone.py, which no install compiled, would be compiled at every start):
    a warm-up run writes it into a temporary PYTHONPYCACHEPREFIX, removed afterwards.
    """
    with tempfile.TemporaryDirectory(prefix="bench-rakerone-pyc-") as cache:
        env = {name: value for name, value in os.environ.items() if name != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPYCACHEPREFIX"] = cache
        for statement in IMPORTS.values():  # untimed: bytecode and page caches warm
            _time_python(statement, env)
        loops = {name: (lambda s=statement: Timing(1, _time_python(s, env))) for name, statement in IMPORTS.items()}
        return interleaved(plan.import_rounds, loops, say, "cold import")


def _time_python(statement: str, env: Dict[str, str]) -> float:
    """Seconds from spawning ``python -c statement`` to its exit.

    Not subprocess.run(timeout=...): waiting with a timeout polls at growing intervals
    (up to 50 ms), which would round every time up to the next poll.
    """
    started = time.perf_counter()
    # cwd=HERE: ``python -c`` puts the working directory first, so this is the measured rakerone.py.
    process = subprocess.Popen([sys.executable, "-c", statement], cwd=HERE, env=env,
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        with _watchdog(CHILD_TIME_LIMIT, process.kill, f"python -c {statement!r}"):
            returncode = process.wait()
        seconds = time.perf_counter() - started
    finally:
        stop_process(process)
    if returncode != 0:
        raise BenchError(f"python -c {statement!r} exited with code {returncode}")
    return seconds


# -- Memory ----------------------------------------------------------------------------


def measure_memory(server: BenchServer, plan: Plan, say: Callable[[str], None]) -> List[dict]:
    """Peak RSS growth of a fresh process consuming the ``memory`` stream, per round."""
    results = []
    for index in range(plan.memory_rounds):
        say(f"memory: round {index + 1} of {plan.memory_rounds} ({plan.memory_events:,} events)")
        results.append(_run_memory_child(server))
    return results


def _run_memory_child(server: BenchServer) -> dict:
    command = [sys.executable, os.path.abspath(__file__), "_memory", server.base_url,
               str(server.streams["memory"]["events"])]
    try:
        done = subprocess.run(command, cwd=HERE, stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=CHILD_TIME_LIMIT, start_new_session=True)
    except subprocess.TimeoutExpired:
        raise BenchError(f"the memory child did not finish within {CHILD_TIME_LIMIT:g} s") from None
    if done.returncode != 0:
        errors = done.stderr.decode(errors="replace")
        sys.stderr.write(errors)
        last_line = (errors.strip().splitlines() or ["no message"])[-1]
        raise BenchError(f"the memory child exited with code {done.returncode}: {last_line}")
    return json.loads(done.stdout)


def consume_for_memory(argv: List[str]) -> int:
    """The memory child: connect, take the first events, reset the peak, consume the rest."""
    base_url, expected = argv[0], int(argv[1])
    with rakerone.Client(api_key=API_KEY, base_url=base_url) as client:
        events = client.iter_run_events(PROJECT_ID, "memory", idle_timeout=STREAM_IDLE_LIMIT)
        try:
            count = sum(1 for _ in itertools.islice(events, MEMORY_WARMUP_EVENTS))
            baseline_kb, peak_method = _status_kb("VmRSS"), _reset_peak()
            started = time.perf_counter()
            for _event in itertools.islice(events, expected - count + 1):
                count += 1
            seconds = time.perf_counter() - started
        finally:
            events.close()
    expect_count("memory stream", count, expected)
    peak_kb = _status_kb("VmHWM") if peak_method == "VmHWM" else _max_rss_kb()
    print(json.dumps({"events": count, "seconds": seconds, "baseline_rss_kb": baseline_kb,
                      "peak_rss_kb": peak_kb, "final_rss_kb": _status_kb("VmRSS"), "peak_method": peak_method}))
    return 0


def _status_kb(field: str) -> int:
    """A /proc/self/status figure in kB (ru_maxrss when there is no /proc)."""
    try:
        with open("/proc/self/status") as file:
            for line in file:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return _max_rss_kb()


def _max_rss_kb() -> int:
    import resource

    scale = 1024 if sys.platform == "darwin" else 1  # bytes there, kB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // scale


def _reset_peak() -> str:
    """Restart the kernel's peak-RSS count from now (Linux >= 4.0); say how the peak is read."""
    try:
        with open("/proc/self/clear_refs", "w") as file:
            file.write("5")
        return "VmHWM"
    except OSError:
        return "ru_maxrss (peak since start: the growth is an upper bound)"


# -- Recovery --------------------------------------------------------------------------


def measure_recovery(plan: Plan, say: Callable[[str], None]) -> Dict[str, List[float]]:
    """Seconds to resume after a dropped connection, and to detect a silent peer."""
    results: Dict[str, List[float]] = {"resume_s": [], "dead_detect_s": []}
    for index in range(plan.recovery_rounds):
        say(f"recovery: round {index + 1} of {plan.recovery_rounds}")
        results["resume_s"].append(_time_resume())
        results["dead_detect_s"].append(_time_dead_detect())
    return results


@contextlib.contextmanager
def _fake_stream(**options: object) -> Iterator[tuple]:
    """A FakeRakerOne with one run whose first event has been received; yield (fake, events)."""
    from rakerone_fake import FakeRakerOne

    with FakeRakerOne(api_key=API_KEY) as fake, \
            rakerone.Client(api_key=API_KEY, base_url=fake.base_url) as client:
        fake.add_run(PROJECT_ID, {"id": RUN_ID, "status": "running"})
        fake.emit_run_event(PROJECT_ID, RUN_ID, {"type": "step.progress", "id": "before"})
        events = client.iter_run_events(PROJECT_ID, RUN_ID, idle_timeout=STREAM_IDLE_LIMIT, **options)
        try:
            if getattr(next(events, None), "id", None) != "before":
                raise BenchError("the fake's first event did not arrive")
            yield fake, events
        finally:
            events.close()


def _time_resume() -> float:
    """From fake.drop_streams() to the event emitted right after it, through a reconnect."""
    with _fake_stream() as (fake, events):
        started = time.perf_counter()
        fake.drop_streams()
        fake.emit_run_event(PROJECT_ID, RUN_ID, {"type": "step.progress", "id": "after"})
        event = next(events, None)
        elapsed = time.perf_counter() - started
    if getattr(event, "id", None) != "after":
        raise BenchError(f"after the drop the client yielded {event!r}, not the new event")
    return elapsed


def _time_dead_detect() -> float:
    """From fake.stop_answering_pings() to StreamDisconnectedError (ping 1 s, pong timeout 1 s)."""
    with _fake_stream(reconnect=False, ping_interval=1, ping_timeout=1) as (fake, events):
        started = time.perf_counter()
        fake.stop_answering_pings()
        try:
            next(events)
        except rakerone.StreamTimeoutError as exc:  # idle_timeout: the heartbeat did not see it
            raise BenchError(f"the silent peer was not detected by the heartbeat: {exc}") from None
        except rakerone.StreamError:
            return time.perf_counter() - started
    raise BenchError("the stream yielded an event from a silent peer")


# -- Figures ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Figure:
    """One named figure: its per-round spread, judged against TARGETS."""

    name: str
    spread: Optional[Spread]  # None when its measurement failed
    unit: str

    @property
    def status(self) -> str:
        target = TARGETS[self.name]
        if self.spread is None:
            return "ERROR"
        if target is None:
            return "info"
        op, threshold = target
        value = self.spread.median
        met = value >= threshold if op == ">=" else value <= threshold if op == "<=" else value < threshold
        return "PASS" if met else "MISS"

    @property
    def target(self) -> str:
        target = TARGETS[self.name]
        return "-" if target is None else f"{target[0]} {target[1]:g}"

    def as_dict(self) -> dict:
        return {"value": None if self.spread is None else self.spread.median,
                "spread": None if self.spread is None else self.spread.as_dict(),
                "unit": self.unit, "target": self.target, "status": self.status}


def compute_figures(results: dict) -> Dict[str, Figure]:
    """Every figure of TARGETS, from paired rounds; a failed section leaves its figures empty."""
    spreads: Dict[str, Spread] = {}
    for size, loops in results.get("streams", {}).items():
        spreads[f"stream_{size}_vs_default"] = ratios(loops["rakerone"], loops["websocket-client defaults"])
        spreads[f"stream_{size}_vs_tuned"] = ratios(loops["rakerone"], loops["websocket-client tuned"])
    if "requests" in results:
        loops = results["requests"]
        spreads["get_run_vs_session"] = ratios(loops["rakerone get_run"], loops["requests.Session().get"])
        spreads["get_run_vs_naive"] = ratios(loops["rakerone get_run"], loops["requests.get"])
    if "imports" in results:  # a time ratio: the deps' rate over rakerone's
        spreads["import_vs_deps"] = ratios(results["imports"]["deps"], results["imports"]["rakerone"])
    if "memory" in results:
        spreads["rss_growth_mb"] = Spread.of([_rss_growth_mb(run) for run in results["memory"]])
    for name, values in results.get("recovery", {}).items():
        spreads[name] = Spread.of(values)
    units = {"rss_growth_mb": "MB", "resume_s": "s", "dead_detect_s": "s", "import_vs_deps": "x time"}
    return {name: Figure(name, spreads.get(name), units.get(name, "x rate")) for name in TARGETS}


def _rss_growth_mb(run: dict) -> float:
    return (run["peak_rss_kb"] - run["baseline_rss_kb"]) * 1024 / MB


def server_check(results: dict) -> dict:
    """How far the servers are from being the bottleneck, from what was measured."""
    check = {}
    for size, loops in results.get("streams", {}).items():
        fastest = max(Spread.of([t.rate for t in loops[name]]).median for name in STREAM_LOOPS[:3])
        ceiling = Spread.of([t.rate for t in loops["transport ceiling"]]).median
        check[f"stream_{size}"] = {"ceiling_events_per_s": ceiling, "ceiling_over_fastest_client": ceiling / fastest,
                                   "max_server_busy_during_client_loops": _max_busy(loops, STREAM_LOOPS[:3])}
    if "requests" in results:
        loops = results["requests"]
        floor = loops["http.client floor"]
        cpu_per_call = [t.server_cpu / t.count for t in floor if t.server_cpu]
        check["http"] = {
            "floor_calls_per_s": Spread.of([t.rate for t in floor]).median,
            "floor_over_rakerone": ratios(floor, loops["rakerone get_run"]).median,
            "server_capacity_calls_per_s": 1 / statistics.median(cpu_per_call) if cpu_per_call else None,
            "max_server_busy_during_client_loops": _max_busy(loops, HTTP_LOOPS[:3]),
        }
    return check


def _max_busy(loops: Dict[str, List[Timing]], names: tuple) -> Optional[float]:
    busy = [t.server_busy for name in names for t in loops[name] if t.server_busy is not None]
    return max(busy) if busy else None


# -- Report ----------------------------------------------------------------------------


def run_benchmark(plan: Plan, cores: Cores, say: Callable[[str], None]) -> dict:
    """Measure everything; a failed section is recorded in ``errors`` and the rest still run."""
    results: dict = {}
    errors: List[str] = []
    server_info: dict = {}

    def attempt(section: str, measure: Callable[[], object]) -> None:
        try:
            results[section] = measure()
        except Exception as exc:  # report it, go on with the other sections, exit 1 at the end
            traceback.print_exc(file=sys.stderr)
            errors.append(f"{section}: {type(exc).__name__}: {exc}")

    try:
        with running_server(plan, cores) as server:
            server_info = {"encode_s": server.encode_s, "streams": server.streams}
            attempt("streams", lambda: measure_streams(server, plan, say))
            attempt("requests", lambda: measure_requests(server, plan, say))
            attempt("memory", lambda: measure_memory(server, plan, say))
    except Exception as exc:  # the server failed to start (or to stop)
        traceback.print_exc(file=sys.stderr)
        errors.append(f"server: {type(exc).__name__}: {exc}")
    attempt("imports", lambda: measure_imports(plan, say))
    attempt("recovery", lambda: measure_recovery(plan, say))
    return {"plan": dataclasses.asdict(plan), "machine": machine_facts(cores), "server": server_info,
            "results": results, "figures": compute_figures(results), "server_check": server_check(results),
            "errors": errors}


def report_json(report: dict) -> str:
    results = report["results"]
    measurements = {
        "streams": {size: _timings_json(loops) for size, loops in results.get("streams", {}).items()},
        "requests": _timings_json(results.get("requests", {})),
        "imports": _timings_json(results.get("imports", {})),
        "memory": results.get("memory"),
        "recovery": results.get("recovery"),
    }
    return json.dumps({
        "plan": report["plan"], "machine": report["machine"], "server": report["server"],
        "figures": {name: figure.as_dict() for name, figure in report["figures"].items()},
        "server_check": report["server_check"], "measurements": measurements,
        "errors": report["errors"], "wall_s": report["wall_s"],
    }, indent=2)


def _timings_json(loops: Dict[str, List[Timing]]) -> dict:
    return {name: [{"count": t.count, "seconds": t.seconds, "rate": t.rate, "server_cpu_s": t.server_cpu}
                   for t in timings] for name, timings in loops.items()}


def report_table(report: dict) -> str:
    lines = _machine_lines(report)
    results = report["results"]
    if "streams" in results:
        lines += _stream_lines(results["streams"], report["server"]["streams"])
    if "requests" in results:
        lines += _rate_lines("Request overhead: sequential get_run of a ~1 KB run (calls/s)", results["requests"])
    if "imports" in results:
        lines += _import_lines(results["imports"])
    if "memory" in results:
        lines += _memory_lines(results["memory"])
    if "recovery" in results:
        lines += _recovery_lines(results["recovery"])
    lines += _check_lines(report["server_check"], report["server"])
    lines += _figure_lines(report["figures"])
    lines += ["", "ERRORS (exit 1):"] + [f"  {error}" for error in report["errors"]] if report["errors"] else []
    lines += ["", f"wall time: {report['wall_s']:.1f} s"]
    return "\n".join(lines)


def _machine_lines(report: dict) -> List[str]:
    machine, plan = report["machine"], report["plan"]
    libraries = ", ".join(f"{name} {version}" for name, version in machine["libraries"].items())
    own = machine["rakerone"]
    return [
        f"rakerone benchmark: {plan['name']} run, {plan['rounds']} round(s); figures are median [min-max]",
        f"python:    {machine['python']} on {machine['platform']}",
        f"cpus:      {machine['cpu_count']}; affinity: {machine['affinity']}",
        f"rakerone:  {own['version']} from {own['file']} (sha256 {own['sha256']}, git {own['git']})",
        f"libraries: {libraries}",
        f"proxies:   {', '.join(machine['proxy_variables']) or 'no *_proxy variables set'}",
    ]


def _fmt(spread: Spread, digits: int = 0) -> str:
    return f"{spread.median:,.{digits}f} [{spread.low:,.{digits}f}-{spread.high:,.{digits}f}]"


def _busy(timings: List[Timing]) -> str:
    busy = [t.server_busy for t in timings if t.server_busy is not None]
    return f"{statistics.median(busy):.0%}" if busy else "n/a"


def _stream_lines(streams: dict, infos: dict) -> List[str]:
    lines = []
    for size, loops in streams.items():
        info = infos[size]
        lines += ["", f"Stream throughput: {info['events']:,} events of {info['payload_bytes'] // info['events']:,} B "
                      f"JSON ({size})",
                  f"  {'loop':<28}{'events/s':>30}{'MB/s (payload)':>28}{'server CPU':>12}"]
        for name, timings in loops.items():
            mb_per_s = Spread.of([t.rate * info["payload_bytes"] / info["events"] / MB for t in timings])
            lines.append(f"  {name:<28}{_fmt(Spread.of([t.rate for t in timings])):>30}"
                         f"{_fmt(mb_per_s, 1):>28}{_busy(timings):>12}")
    return lines


def _rate_lines(title: str, loops: Dict[str, List[Timing]]) -> List[str]:
    lines = ["", title, f"  {'loop':<28}{'calls/s':>30}{'server CPU':>12}"]
    for name, timings in loops.items():
        lines.append(f"  {name:<28}{_fmt(Spread.of([t.rate for t in timings])):>30}{_busy(timings):>12}")
    return lines


def _import_lines(imports: Dict[str, List[Timing]]) -> List[str]:
    bare = Spread.of([t.seconds for t in imports["bare"]]).median
    lines = ["", "Cold import: wall time of a fresh `python -c` (ms), bytecode cached by a warm-up run",
             f"  {'statement':<40}{'ms':>24}{'net of bare python':>22}"]
    for name, timings in imports.items():
        spread = Spread.of([t.seconds * 1000 for t in timings])
        lines.append(f"  {IMPORTS[name]:<40}{_fmt(spread, 1):>24}{spread.median - bare * 1000:>20.1f}ms")
    return lines


def _memory_lines(runs: List[dict]) -> List[str]:
    lines = ["", "Memory: a fresh process consuming the memory stream with iter_run_events"]
    for run in runs:
        lines.append(f"  {run['events']:,} events in {run['seconds']:.1f} s: RSS {_kb_to_mb(run['baseline_rss_kb'])} "
                     f"after the first {MEMORY_WARMUP_EVENTS:,}, peak {_kb_to_mb(run['peak_rss_kb'])} "
                     f"({run['peak_method']}), final {_kb_to_mb(run['final_rss_kb'])}")
    return lines


def _kb_to_mb(kilobytes: int) -> str:
    return f"{kilobytes * 1024 / MB:.1f} MB"


def _recovery_lines(recovery: Dict[str, List[float]]) -> List[str]:
    values = {name: ", ".join(f"{v:.3f}" for v in samples) for name, samples in recovery.items()}
    return ["", "Recovery with rakerone_fake.FakeRakerOne (in this process)",
            f"  resume_s:      drop_streams() -> next event after the reconnect: {values['resume_s']}",
            f"  dead_detect_s: stop_answering_pings() -> StreamDisconnectedError, ping 1 s + 1 s: "
            f"{values['dead_detect_s']}"]


def _check_lines(check: dict, server: dict) -> List[str]:
    lines = ["", "Are the servers the bottleneck? (a separate process on its own core)"]
    if server:
        lines.append(f"  frames encoded once at start ({server['encode_s']:.1f} s), each stream sent with one sendall")
        lines.append("  server CPU = the server process's CPU time (all threads) over each loop's wall time")
    for size in ("small", "large"):
        stream = check.get(f"stream_{size}")
        if stream:
            lines.append(f"  stream {size}: transport ceiling {stream['ceiling_events_per_s']:,.0f} events/s = "
                         f"{stream['ceiling_over_fastest_client']:.1f}x the fastest client loop; server busy at most "
                         f"{_percent(stream['max_server_busy_during_client_loops'])} of its core during client loops")
    http_check = check.get("http")
    if http_check:
        capacity = http_check["server_capacity_calls_per_s"]
        lines.append(f"  http: http.client floor {http_check['floor_calls_per_s']:,.0f} calls/s = "
                     f"{http_check['floor_over_rakerone']:.1f}x get_run; server CPU per call gives a capacity of "
                     f"~{capacity or 0:,.0f} calls/s; server busy at most "
                     f"{_percent(http_check['max_server_busy_during_client_loops'])} during client loops")
    return lines


def _percent(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def _figure_lines(figures: Dict[str, Figure]) -> List[str]:
    lines = ["", "Figures (ratio > 1: rakerone faster; import_vs_deps is a time ratio)",
             f"  {'figure':<26}{'median [min-max]':>26}{'unit':>8}{'target':>10}{'result':>8}"]
    for figure in figures.values():
        value = "-" if figure.spread is None else _fmt(figure.spread, 3 if figure.unit == "s" else 2)
        lines.append(f"  {figure.name:<26}{value:>26}{figure.unit:>8}{figure.target:>10}{figure.status:>8}")
    return lines


# -- Command line ----------------------------------------------------------------------

CHILD_MODES = {"_serve": serve, "_memory": consume_for_memory}


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in CHILD_MODES:
        return CHILD_MODES[argv[0]](argv[1:])
    args = _parser().parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.rounds:
        plan = dataclasses.replace(plan, rounds=args.rounds)
    cores = choose_cores()
    pin(cores.client)
    started = time.perf_counter()
    try:
        report = run_benchmark(plan, cores, lambda message: print(f"bench: {message}", file=sys.stderr, flush=True))
    except KeyboardInterrupt:
        print("bench: interrupted; the servers and children it started are stopped", file=sys.stderr)
        return 130
    report["wall_s"] = time.perf_counter() - started
    print(report_json(report) if args.json else report_table(report))
    return 1 if report["errors"] else 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Benchmark rakerone on 127.0.0.1 (see the module docstring).")
    parser.add_argument("--quick", action="store_true", help="one small smoke round (what CI runs)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--rounds", type=int, help="override the number of rounds of the comparisons")
    return parser


if __name__ == "__main__":
    sys.exit(main())
