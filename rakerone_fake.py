"""A fake RakerOne API server, embedded in tests or run from the command line.

One port on 127.0.0.1 serves the REST endpoints and the run and brief WebSockets, on
werkzeug's threaded development server and simple-websocket (threads, no asyncio).
Installing rakerone gives pytest a ``rakerone_fake`` fixture (see rakerone_pytest.py):
tests script runs, stream messages, canned routes and faults, then check what the
fake saw::

    def test_my_watcher_sees_the_history(rakerone_fake):
        rakerone_fake.add_run("proj_1", {"id": "run_1", "status": "running"})
        rakerone_fake.emit_run_event("proj_1", "run_1", {"type": "log", "id": "e1"})
        rakerone_fake.finish_run_stream("proj_1", "run_1")  # close 1000 after the history

        with rakerone.Client() as client:  # the fixture pointed the environment at the fake
            assert [e.id for e in client.iter_run_events("proj_1", "run_1")] == ["e1"]
        assert rakerone_fake.requests[0].headers["Authorization"] == "Bearer ***"

Outside pytest, ``with FakeRakerOne() as fake:`` starts and stops one. It binds
loopback only unless told ``allow_remote=True``. ``python -m rakerone_fake`` serves a
sample run until Ctrl-C. Install with the ``fake`` extra (werkzeug, simple-websocket).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import ipaddress
import json
import logging
import queue
import re
import secrets
import shlex
import socket
import sys
import threading
import time
import types
import typing
import urllib.parse
import weakref

import simple_websocket
from werkzeug.exceptions import HTTPException, MethodNotAllowed
from werkzeug.http import HTTP_STATUS_CODES
from werkzeug.routing import Map, Rule, WebsocketMismatch
from werkzeug.serving import WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

__all__ = ["FakeRakerOne", "RecordedRequest", "main", "SAMPLE_PROJECT_ID", "SAMPLE_RUN", "SAMPLE_BRIEF_ID"]

# -- Constants -------------------------------------------------------------------------

SAMPLE_PROJECT_ID = "proj_9876543210"
#: The example of the "Get a playbook run" reference page, served by ``python -m rakerone_fake``.
SAMPLE_RUN = {
    "id": "a1b2c3d4-e5f6-7890-ab12-cd34ef567890",
    "projectId": "proj_9876543210",
    "status": "completed",
    "startedAt": "2024-06-10T09:15:00Z",
    "finishedAt": "2024-06-10T09:45:00Z",
    "triggeredBy": "user_123456",
    "steps": [
        {
            "stepId": "step_001",
            "name": "Initialize playbook",
            "status": "success",
            "startedAt": "2024-06-10T09:15:00Z",
            "finishedAt": "2024-06-10T09:17:00Z",
        },
        {
            "stepId": "step_002",
            "name": "Run AI agent",
            "status": "success",
            "startedAt": "2024-06-10T09:17:00Z",
            "finishedAt": "2024-06-10T09:40:00Z",
        },
        {
            "stepId": "step_003",
            "name": "Notify team",
            "status": "success",
            "startedAt": "2024-06-10T09:40:00Z",
            "finishedAt": "2024-06-10T09:45:00Z",
        },
    ],
    "metadata": {"environment": "production", "priority": "high"},
}
SAMPLE_BRIEF_ID = "brief_0123456789"

logger = logging.getLogger("rakerone.fake")

_CLOSE_GRACE_SECONDS = 2.0  # how long a socket we closed waits for the client's close frame
_SERVE_POLL_SECONDS = 0.02  # how soon serve_forever() notices shutdown()
_WAIT_POLL_SECONDS = 0.01
_SIGNAL_POLL_SECONDS = 0.5  # how soon the command line notices a Ctrl-C
_NO_STATUS_RECEIVED = 1005  # simple-websocket's close_reason until a client's close frame
_STREAM_SEGMENTS = {"run": "playbook-runs", "brief": "briefs"}
_ENDED = object()  # put in a connection's outbox to wake its sender once the socket is gone
_LOOPBACK_NAMES = ("localhost",)  # "localhost." goes to DNS

_PROJECT = "/api/projects/<project_id>"
#: Endpoints name FakeRakerOne methods; ``defaults`` tell them which kind of stream.
_ROUTES = Map(
    [
        Rule(f"{_PROJECT}/playbook-runs/<run_id>", endpoint="_get_run", methods=["GET"]),
        Rule(
            f"{_PROJECT}/playbook-runs/<stream_id>/ws-ticket",
            endpoint="_mint_ticket",
            methods=["POST"],
            defaults={"kind": "run"},
        ),
        Rule(
            f"{_PROJECT}/briefs/<stream_id>/ws-ticket",
            endpoint="_mint_ticket",
            methods=["POST"],
            defaults={"kind": "brief"},
        ),
        Rule(
            f"{_PROJECT}/playbook-runs/<stream_id>/ws",
            endpoint="_open_socket",
            methods=["GET"],
            defaults={"kind": "run"},
            websocket=True,
        ),
        Rule(
            f"{_PROJECT}/briefs/<stream_id>/ws",
            endpoint="_open_socket",
            methods=["GET"],
            defaults={"kind": "brief"},
            websocket=True,
        ),
    ],
    merge_slashes=False,  # an empty id is a 404, not a redirect
    redirect_defaults=False,
)

# -- Records and responses -------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RecordedRequest:
    """One HTTP request the fake received (WebSocket upgrades included), as sent.

    ``path`` is decoded, as werkzeug gives it (``/api/projects/...``); ``query`` is the
    query string's ``(name, value)`` pairs in order; ``headers`` maps Title-Case names
    to values, read-only, with the ``Authorization`` value redacted to its scheme
    (``"Bearer ***"``); ``body`` is the raw body and ``json`` the body decoded as JSON,
    or None when there is no body or it is not JSON.
    """

    method: str
    path: str
    query: tuple
    headers: typing.Mapping[str, str]
    body: bytes
    json: object

    @classmethod
    def from_request(cls, request: Request) -> RecordedRequest:
        """Record a werkzeug request; its body is read (and cached for the endpoint)."""
        query = urllib.parse.parse_qsl(request.query_string.decode("utf-8", "replace"),
                                       keep_blank_values=True)
        headers = {name: _redact_credentials(name, value) for name, value in request.headers.items()}
        body = request.get_data(cache=True)
        return cls(request.method, request.path, tuple(query),
                   types.MappingProxyType(headers), body, _json_or_none(body))


def _redact_credentials(name: str, value: str) -> str:
    """Keep an Authorization header's scheme only: the key is never stored in clear."""
    if name.lower() != "authorization":
        return value
    scheme, _, credentials = value.partition(" ")
    return f"{scheme} ***" if credentials else "***"


def _json_or_none(body: bytes) -> object:
    try:
        return json.loads(body) if body else None
    except ValueError:  # not JSON, or not UTF-8 (UnicodeDecodeError is a ValueError)
        return None


class _StreamKey(typing.NamedTuple):
    """Which stream: a run's events or a brief's shaping log."""

    kind: str  # "run" or "brief"
    project_id: str
    stream_id: str

    @property
    def path(self) -> str:
        """The stream's resource path under ``/api``, its segments percent-encoded."""
        project = urllib.parse.quote(self.project_id, safe="")
        stream = urllib.parse.quote(self.stream_id, safe="")
        return f"/projects/{project}/{_STREAM_SEGMENTS[self.kind]}/{stream}"


@dataclasses.dataclass(frozen=True)
class _Target:
    """Which streams a fault is aimed at: a project's, one run's or brief's, or all."""

    project_id: str | None = None
    kind: str | None = None  # "run" or "brief", with stream_id
    stream_id: str | None = None

    @classmethod
    def of(cls, project_id: str | None, run_id: str | None, brief_id: str | None) -> _Target:
        """Build a target from a fault method's keywords; none of them: every stream."""
        if run_id is not None and brief_id is not None:
            raise ValueError("aim a fault at a run_id or a brief_id, not both")
        if run_id is not None:
            return cls(project_id, "run", run_id)
        if brief_id is not None:
            return cls(project_id, "brief", brief_id)
        return cls(project_id)

    def matches(self, key: _StreamKey) -> bool:
        return ((self.project_id is None or self.project_id == key.project_id)
                and (self.kind is None or (self.kind, self.stream_id) == (key.kind, key.stream_id)))

    def __str__(self) -> str:
        if self.kind is None:
            return "every stream" if self.project_id is None else f"project {self.project_id}"
        project = "" if self.project_id is None else f"{self.project_id}/"
        return f"{self.kind} {project}{self.stream_id}"


_EVERY_STREAM = _Target()


@dataclasses.dataclass(frozen=True)
class _Route:
    """A canned answer for one method and path, added by ``add_route``."""

    status: int
    json: object
    headers: dict

    def response(self) -> Response:
        body = "" if self.json is None else json.dumps(self.json)
        mimetype = None if self.json is None else "application/json"
        return Response(body, self.status, self.headers, mimetype=mimetype)


@dataclasses.dataclass(frozen=True)
class _Close:
    """A close frame to send."""

    code: int
    reason: str = ""


@dataclasses.dataclass
class _Stream:
    """A stream's history (frames encoded once), its finish, its live connections."""

    history: list = dataclasses.field(default_factory=list)
    subscribers: set = dataclasses.field(default_factory=set)
    finish: _Close | None = None


@dataclasses.dataclass
class _Ticket:
    """A minted WebSocket ticket; the fake keeps them all, to tell expired from unknown."""

    key: _StreamKey
    expires_at: float  # time.time()
    used: bool = False


@dataclasses.dataclass
class _Fault:
    """A canned answer for the next ``remaining`` requests whose path contains ``paths``."""

    status: int
    retry_after: object
    html: bool
    paths: str
    remaining: int

    def response(self) -> Response:
        """Build the canned answer: ErrorResponse JSON, or a proxy's HTML page."""
        headers = {} if self.retry_after is None else {"Retry-After": str(self.retry_after)}
        if not self.html:
            return _error_response(self.status, _error_code(self.status), headers)
        title = f"{self.status} {HTTP_STATUS_CODES.get(self.status, 'Error')}"
        page = f"<html><body><h1>{title}</h1></body></html>"
        return Response(page, self.status, headers, mimetype="text/html")


@dataclasses.dataclass(frozen=True)
class _Rejection:
    """How to turn away one WebSocket upgrade: an HTTP status, or a close right after."""

    status: int | None
    close_code: int | None
    target: _Target


@dataclasses.dataclass(frozen=True)
class _DropPlan:
    """Cut one WebSocket of the target's streams after this many data frames."""

    frames: int
    target: _Target


def _json_response(status: int, body: object, headers: dict | None = None) -> Response:
    return Response(json.dumps(body), status, headers, mimetype="application/json")


def _error_response(status: int, error: str, headers: dict | None = None) -> Response:
    """Answer an ErrorResponse: ``{"error": <machine-readable code>}``."""
    return _json_response(status, {"error": error}, headers)


def _error_code(status: int) -> str:
    """Name a status as an error code: 503 -> "service_unavailable"."""
    phrase = HTTP_STATUS_CODES.get(status, "error")
    return re.sub(r"[^a-z0-9]+", "_", phrase.lower()).strip("_")


def _is_loopback(host: str) -> bool:
    """Whether a bind address reaches this machine only: localhost or a loopback literal."""
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name, or "" (every interface)
        return False


def _take_first(items: list, is_wanted: typing.Callable[[typing.Any], bool]) -> typing.Any:
    """Remove and return the first wanted item of a list, or None."""
    for index, item in enumerate(items):
        if is_wanted(item):
            return items.pop(index)
    return None


def _iso_utc(timestamp: float) -> str:
    """Format a time.time() value as ISO-8601 UTC with a Z, to the second."""
    moment = datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


# -- WebSockets ------------------------------------------------------------------------


class _WebSocketEnded(ConnectionError):
    """Raised by the WSGI app once a WebSocket is over, as flask-sock does.

    werkzeug's server takes a ConnectionError as "the client went away" and writes
    nothing more, which is right: the socket no longer speaks HTTP.
    """


class _StreamSocket(simple_websocket.Server):
    """simple-websocket's server side, able to play dead."""

    def __init__(self, environ: dict, is_silent: typing.Callable[[], bool],
                 thread_class: typing.Callable[..., threading.Thread]) -> None:
        self._is_silent = is_silent
        super().__init__(environ, thread_class=thread_class)

    def _handle_events(self) -> bool:
        # simple-websocket answers pings here, in its reader thread: while the fake is
        # silent, swallow every event instead, so the client sees a dead peer.
        if not (self.connected and self._is_silent()):
            return super()._handle_events()
        for _event in self.ws.events():
            pass
        return True


class _Connection:
    """One accepted WebSocket: its socket, its outbox of frames, its fault plan.

    The werkzeug thread that accepted it sends the outbox in order; simple-websocket's
    reader thread reads (and ignores) what the client says and reports when it ends.
    """

    def __init__(self, key: _StreamKey,
                 on_reader_exit: typing.Callable[[_Connection], None]) -> None:
        self.key = key
        #: Frames to send: str (text), bytes (binary) or _Close; _ENDED wakes the sender.
        self.outbox: queue.SimpleQueue = queue.SimpleQueue()
        #: Data frames to send before an abrupt cut (drop_after_frames); None: no limit.
        self.frames_left: int | None = None
        #: True once the socket is cut or its reader has stopped; guarded by the fake's lock.
        self.ended = False
        self._on_reader_exit = on_reader_exit
        self.ws: _StreamSocket | None = None

    def accept(self, environ: dict, is_silent: typing.Callable[[], bool]) -> None:
        """Complete the upgrade (the 101 response) and start the reader thread."""
        self.ws = _StreamSocket(environ, is_silent, thread_class=self._make_reader)

    def write(self, item: str | bytes | _Close) -> bool:
        """Send one data or close frame; False when the socket is gone."""
        try:
            if isinstance(item, _Close):
                self.ws.close(item.code, item.reason)
            else:
                self.ws.send(item)
        # Besides ConnectionClosed and OSError, wsproto raises its LocalProtocolError
        # when a client's close frame races our send; simple-websocket does not export it.
        except Exception as exc:
            logger.debug("cannot write to a %s socket: %r", self.key.kind, exc)
            return False
        if self.frames_left is not None and not isinstance(item, _Close):
            self.frames_left -= 1
        return True

    def await_reader(self, timeout: float | None = None) -> None:
        """Wait for the reader thread to end (the client's close frame, or EOF)."""
        self.ws.thread.join(timeout)

    def shutdown(self) -> None:
        """Cut the TCP connection without a close frame; the reader thread then ends."""
        try:
            self.ws.sock.shutdown(socket.SHUT_RDWR)
        except OSError:  # already closed by the client or by an earlier cut
            pass

    def client_close_code(self) -> int | None:
        """The code of the close frame the client sent, if it sent one with a code."""
        code = int(self.ws.close_reason)
        return None if code == _NO_STATUS_RECEIVED else code

    def _make_reader(self, target: typing.Callable[[], None]) -> threading.Thread:
        """Build simple-websocket's reader thread so that its end wakes our sender."""
        return threading.Thread(target=self._read, args=(target,),
                                name="rakerone-fake-ws-reader", daemon=True)

    def _read(self, target: typing.Callable[[], None]) -> None:
        try:
            target()
        finally:
            self._on_reader_exit(self)


class _QuietRequestHandler(WSGIRequestHandler):
    """werkzeug's request handler, logging to ``rakerone.fake`` at debug level."""

    def log(self, level: str, message: str, *args: object) -> None:
        logger.debug(message, *args)


# -- The fake server -------------------------------------------------------------------


class FakeRakerOne:
    """A RakerOne API on one local port: runs, tickets, run and brief WebSockets.

    Scripting methods add runs, briefs and canned routes and emit stream messages (they
    return None; ``update_run`` returns the merged run). Fault methods make the next
    requests or connections fail in chosen ways, on every stream or on the one named by
    ``project_id=`` / ``run_id=`` / ``brief_id=``. Read-only properties tell what the
    fake saw. Every method is safe to call from any thread. ``with`` starts and stops
    it; ``stop()`` closes every socket and joins every thread it started.

    It listens on loopback only: any other ``host`` ("" and "0.0.0.0" included) would
    serve the key to the network and needs ``allow_remote=True``.
    """

    def __init__(self, api_key: str = "test-key", host: str = "127.0.0.1", port: int = 0,
                 *, ticket_ttl: float = 300.0, single_use_tickets: bool = False,
                 include_ws_url: bool = True, ssl_context: object = None,
                 allow_remote: bool = False) -> None:
        self.api_key = api_key
        self.host = host
        #: Whether a ``host`` that is not loopback may be bound.
        self.allow_remote = allow_remote
        self._check_host()
        #: werkzeug's ssl_context (an ssl.SSLContext or a (cert, key) pair): serve https/wss.
        self.ssl_context = ssl_context
        #: The port to bind; after start(), the bound one (0 picks a free port).
        self.port = port
        #: Seconds a ticket stays valid after minting.
        self.ticket_ttl = ticket_ttl
        #: Whether a ticket opens only one WebSocket.
        self.single_use_tickets = single_use_tickets
        #: Whether ticket responses carry ``wsUrl``.
        self.include_ws_url = include_ws_url
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # silence lifted, or a socket ended
        self._server = None
        self._serve_thread: threading.Thread | None = None
        self._request_threads: weakref.WeakSet = weakref.WeakSet()
        self._runs: dict = {}
        self._streams: dict = {}
        self._tickets: dict = {}
        self._open: set = set()
        self._faults: list = []
        self._routes: dict = {}  # (method, path under /api) -> _Route
        self._rejections: list = []
        self._drop_plans: list = []
        self._silenced: tuple = ()  # the _Target of each stop_answering_pings()
        self._tickets_minted = 0
        self._connections = 0
        self._client_close_codes: list = []
        self._requests: list = []

    def __repr__(self) -> str:
        state = "running" if self._server is not None else "stopped"
        return f"<FakeRakerOne {self.base_url} {state}, {self.live_connections} live sockets>"

    def __enter__(self) -> FakeRakerOne:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        """The API root to give the client, e.g. ``http://127.0.0.1:PORT/api``."""
        scheme = "http" if self.ssl_context is None else "https"
        return f"{scheme}://{self._netloc}/api"

    @property
    def _netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    # -- Lifecycle ---------------------------------------------------------------------

    def start(self) -> FakeRakerOne:
        """Bind (port 0 picks a free port) and serve from a daemon thread; return self."""
        if self._server is not None:
            raise RuntimeError("the fake is already running")
        self._check_host()
        try:
            server = make_server(self.host, self.port, self._wsgi_app, threaded=True,
                                 ssl_context=self.ssl_context,
                                 request_handler=_QuietRequestHandler)
        except SystemExit as exc:  # werkzeug reports a failed bind by printing and exiting
            raise OSError(f"cannot listen on {self._netloc}") from exc
        self.port = server.port
        thread = threading.Thread(target=server.serve_forever, name="rakerone-fake-server",
                                  kwargs={"poll_interval": _SERVE_POLL_SECONDS}, daemon=True)
        with self._lock:
            self._server, self._serve_thread = server, thread
        thread.start()
        logger.debug("serving %s", self.base_url)
        return self

    def stop(self) -> None:
        """Cut every WebSocket, stop serving, and join every thread the fake started.

        Calling it again does nothing. State (runs, history, counters) is kept, so
        ``start()`` serves it again on the same port.
        """
        with self._lock:
            server, thread = self._server, self._serve_thread
            self._server = self._serve_thread = None
            connections = list(self._open)
        if server is None:
            return
        for conn in connections:
            self._cut(conn)
        server.shutdown()
        thread.join()  # serve_forever() ends with server_close(), closing the listener
        with self._lock:
            request_threads = list(self._request_threads)
        for request_thread in request_threads:
            request_thread.join()
        logger.debug("stopped %s", self.base_url)

    def _check_host(self) -> None:
        if not (self.allow_remote or _is_loopback(self.host)):
            where = "every interface" if self.host in ("", "0.0.0.0", "::") else repr(self.host)
            raise ValueError(
                f"FakeRakerOne would listen on {where}, serving its API key to anyone who can "
                "reach this machine; use host='127.0.0.1' (the default), or pass "
                "allow_remote=True if you mean it")

    # -- Scripting ---------------------------------------------------------------------

    def add_run(self, project_id: str, run: dict) -> None:
        """Store a copy of a run (it needs an ``"id"``), with an empty event stream."""
        if "id" not in run:
            raise ValueError("a run needs an 'id'")
        stored = dict(run)
        with self._lock:
            self._runs[(project_id, stored["id"])] = stored
            self._streams.setdefault(_StreamKey("run", project_id, stored["id"]), _Stream())

    def update_run(self, project_id: str, run_id: str, **fields: object) -> dict:
        """Merge fields into a stored run (e.g. ``status="completed"``); return a copy."""
        with self._lock:
            run = self._runs.get((project_id, run_id))
            if run is None:
                raise KeyError(f"no run {project_id}/{run_id}: add_run() it first")
            run.update(fields)
            return dict(run)

    def add_brief(self, project_id: str, brief_id: str) -> None:
        """Create a brief with an empty shaping-log stream."""
        with self._lock:
            self._streams.setdefault(_StreamKey("brief", project_id, brief_id), _Stream())

    def emit_run_event(self, project_id: str, run_id: str, message: dict) -> None:
        """Append a message to a run's history and send it to its live sockets."""
        self._emit(_StreamKey("run", project_id, run_id), message)

    def emit_brief_event(self, project_id: str, brief_id: str, message: dict) -> None:
        """Append a message to a brief's history and send it to its live sockets."""
        self._emit(_StreamKey("brief", project_id, brief_id), message)

    #: The first name of emit_brief_event, which README documented.
    emit_brief_entry = emit_brief_event

    def finish_run_stream(self, project_id: str, run_id: str, code: int = 1000,
                          reason: str = "") -> None:
        """Close a run's live sockets with ``code``; later ones get history, then that."""
        self._finish(_StreamKey("run", project_id, run_id), _Close(code, reason))

    def finish_brief_stream(self, project_id: str, brief_id: str, code: int = 1000,
                            reason: str = "") -> None:
        """Close a brief's live sockets with ``code``; later ones get history, then that."""
        self._finish(_StreamKey("brief", project_id, brief_id), _Close(code, reason))

    def add_route(self, method: str, path: str, status: int = 200, *, json: object = None,
                  headers: dict | None = None) -> None:
        """Answer ``method`` on ``path`` with a canned response, to authorized requests.

        ``path`` is relative to base_url (``"/projects/p1/playbook-runs"``), matched
        exactly against the decoded path, the query ignored. Routes are checked before
        the built-in endpoints, so one can replace a built-in answer; adding the same
        method and path again replaces it. ``json`` is the body (None: empty).
        """
        route_path = "/" + path.lstrip("/")
        with self._lock:
            self._routes[(method.upper(), route_path)] = _Route(status, json, dict(headers or {}))

    def _emit(self, key: _StreamKey, message: dict) -> None:
        frame = json.dumps(message)
        with self._lock:
            stream = self._stream(key)
            stream.history.append(frame)
            for conn in stream.subscribers:
                conn.outbox.put(frame)

    def _finish(self, key: _StreamKey, close: _Close) -> None:
        with self._lock:
            stream = self._stream(key)
            stream.finish = close
            self._close_subscribers(stream, close)

    def _stream(self, key: _StreamKey) -> _Stream:
        """Find a stream (holding the lock); KeyError names what to add first."""
        stream = self._streams.get(key)
        if stream is None:
            adder = "add_run" if key.kind == "run" else "add_brief"
            raise KeyError(f"no {key.kind} {key.project_id}/{key.stream_id}: {adder}() it first")
        return stream

    @staticmethod
    def _close_subscribers(stream: _Stream, close: _Close) -> None:
        """Queue a close frame for each live socket of a stream, which then gets no more."""
        for conn in stream.subscribers:
            conn.outbox.put(close)
        stream.subscribers.clear()

    # -- Fault injection ---------------------------------------------------------------
    # Stream faults take project_id=, run_id= or brief_id= to aim at those streams only;
    # without them they hit every stream, as they always did.

    def fail_next_requests(self, count: int = 1, status: int = 503, *, retry_after: object = None,
                           html: bool = False, paths: str = "") -> None:
        """Answer ``status`` to the next ``count`` HTTP requests whose path contains ``paths``.

        The body is an ErrorResponse, or with ``html=True`` a proxy's HTML error page;
        ``retry_after`` sets a Retry-After header. WebSocket upgrades are not affected.
        """
        if count > 0:
            with self._lock:
                self._faults.append(_Fault(status, retry_after, html, paths, count))

    def drop_streams(self, *, project_id: str | None = None, run_id: str | None = None,
                     brief_id: str | None = None) -> None:
        """Cut open WebSockets at the TCP level, with no close frame (the client: 1006)."""
        target = _Target.of(project_id, run_id, brief_id)
        with self._lock:
            connections = [conn for conn in self._open if target.matches(conn.key)]
        for conn in connections:
            self._cut(conn)

    def drop_after_frames(self, frames: int, connections: int = 1, *, project_id: str | None = None,
                          run_id: str | None = None, brief_id: str | None = None) -> None:
        """Cut the next ``connections`` WebSockets abruptly after ``frames`` data frames.

        History frames count; 0 cuts right after the upgrade.
        """
        plan = _DropPlan(frames, _Target.of(project_id, run_id, brief_id))
        with self._lock:
            self._drop_plans.extend([plan] * connections)

    def close_streams(self, code: int, reason: str = "", *, project_id: str | None = None,
                      run_id: str | None = None, brief_id: str | None = None) -> None:
        """Send a close frame to live sockets; the streams stay open to new ones."""
        close = _Close(code, reason)
        with self._lock:
            for stream in self._streams_aimed_at(_Target.of(project_id, run_id, brief_id)):
                self._close_subscribers(stream, close)

    def reject_next_connections(self, count: int = 1, status: int | None = None, *,
                                close_code: int | None = None, project_id: str | None = None,
                                run_id: str | None = None, brief_id: str | None = None) -> None:
        """Turn away the next ``count`` WebSocket upgrades; give exactly one way.

        ``status``: answer that HTTP status (ErrorResponse JSON) instead of upgrading.
        ``close_code``: upgrade (checking the ticket), then close with that code at once.
        """
        if (status is None) == (close_code is None):
            raise ValueError("give exactly one of status or close_code")
        rejection = _Rejection(status, close_code, _Target.of(project_id, run_id, brief_id))
        with self._lock:
            self._rejections.extend([rejection] * count)

    def send_raw_frame(self, data: str | bytes, *, project_id: str | None = None,
                       run_id: str | None = None, brief_id: str | None = None) -> None:
        """Send a str (text frame) or bytes (binary frame) as-is to live sockets.

        The frame is not added to any history, so a reconnecting client does not see it.
        """
        if not isinstance(data, (str, bytes)):
            raise TypeError(f"send a str or bytes, not {type(data).__name__}")
        with self._lock:
            for stream in self._streams_aimed_at(_Target.of(project_id, run_id, brief_id)):
                for conn in stream.subscribers:
                    conn.outbox.put(data)

    def stop_answering_pings(self, *, project_id: str | None = None, run_id: str | None = None,
                             brief_id: str | None = None) -> None:
        """Play dead: open and new sockets send nothing, answer no ping, ignore clients.

        Upgrades still succeed. Frames meant for these sockets (close frames too) wait,
        as on a stalled network, until resume_answering_pings(); a client's close frame
        is lost. drop_streams() and stop() still cut at once.
        """
        target = _Target.of(project_id, run_id, brief_id)
        with self._lock:
            self._silenced += (target,)

    def resume_answering_pings(self, *, project_id: str | None = None, run_id: str | None = None,
                               brief_id: str | None = None) -> None:
        """Come back to life: answer pings and send the frames that waited.

        Without a target, every silence ends; with one, the silence aimed at that same
        target (a ValueError if there is none).
        """
        target = _Target.of(project_id, run_id, brief_id)
        with self._lock:
            if target == _EVERY_STREAM:
                self._silenced = ()
            elif target in self._silenced:
                self._silenced = tuple(each for each in self._silenced if each != target)
            else:
                silenced = ", ".join(map(str, self._silenced)) or "nothing"
                raise ValueError(f"no stop_answering_pings() aimed at {target} (silenced: {silenced})")
            self._changed.notify_all()

    def expire_tickets(self, *, project_id: str | None = None, run_id: str | None = None,
                       brief_id: str | None = None) -> None:
        """Make the tickets minted so far expired (later upgrades get ticket_expired)."""
        target = _Target.of(project_id, run_id, brief_id)
        now = time.time()
        with self._lock:
            for ticket in self._tickets.values():
                if target.matches(ticket.key):
                    ticket.expires_at = min(ticket.expires_at, now)

    def _streams_aimed_at(self, target: _Target) -> list:
        """The streams a fault is aimed at (holding the lock)."""
        return [stream for key, stream in self._streams.items() if target.matches(key)]

    def _is_silenced(self, key: _StreamKey) -> bool:
        # Read without the lock from reader threads: the tuple is replaced, never changed.
        return any(target.matches(key) for target in self._silenced)

    # -- Observation -------------------------------------------------------------------

    @property
    def tickets_minted(self) -> int:
        """How many ws-ticket requests succeeded."""
        return self._tickets_minted

    @property
    def connections(self) -> int:
        """How many WebSocket upgrades were accepted."""
        return self._connections

    @property
    def live_connections(self) -> int:
        """How many WebSockets are open right now."""
        with self._lock:
            return len(self._open)

    @property
    def client_close_codes(self) -> list:
        """The codes of the close frames clients sent, in order (a copy)."""
        with self._lock:
            return list(self._client_close_codes)

    @property
    def requests(self) -> list:
        """Every HTTP request, upgrades included, in order: a list of RecordedRequest."""
        with self._lock:
            return list(self._requests)

    @property
    def requests_seen(self) -> list:
        """``(method, path)`` of every request, upgrades included, in order (a copy)."""
        with self._lock:
            return [(record.method, record.path) for record in self._requests]

    def wait_for(self, predicate: typing.Callable[[], object], timeout: float = 5.0) -> bool:
        """Poll ``predicate()`` until it is true (return True) or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() >= deadline:
                return False
            time.sleep(_WAIT_POLL_SECONDS)
        return True

    # -- HTTP --------------------------------------------------------------------------

    def _wsgi_app(self, environ: dict, start_response: typing.Callable) -> typing.Iterable:
        """Answer one request; werkzeug calls this on a new thread per connection."""
        request = Request(environ)
        record = RecordedRequest.from_request(request)
        with self._lock:
            self._request_threads.add(threading.current_thread())
            self._requests.append(record)
        return self._respond(request)(environ, start_response)

    def _respond(self, request: Request) -> Response:
        """Answer a fault, else a canned route, else a built-in endpoint, else 404."""
        adapter = _ROUTES.bind_to_environ(request.environ)
        fault = None if adapter.websocket else self._take_fault(request.path)
        if fault is not None:
            return fault.response()
        route = self._find_route(request)
        if route is not None:
            authorized = self._is_authorized(request)
            return route.response() if authorized else _error_response(401, "unauthorized")
        try:
            endpoint, arguments = adapter.match()
        except WebsocketMismatch:
            if adapter.websocket:  # an upgrade to a plain endpoint: no socket there
                return _error_response(404, "not_found")
            return _error_response(400, "upgrade_required")
        except MethodNotAllowed as exc:
            allow = ", ".join(sorted(exc.valid_methods or ()))
            return _error_response(405, "method_not_allowed", {"Allow": allow})
        except HTTPException as exc:
            return _error_response(exc.code, _error_code(exc.code))
        return getattr(self, endpoint)(request, **arguments)

    def _take_fault(self, path: str) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.paths in path:
                    fault.remaining -= 1
                    if fault.remaining == 0:
                        self._faults.remove(fault)
                    return fault
        return None

    def _find_route(self, request: Request) -> _Route | None:
        if not request.path.startswith("/api/"):
            return None
        with self._lock:
            return self._routes.get((request.method, request.path[len("/api"):]))

    def _is_authorized(self, request: Request) -> bool:
        auth = request.authorization
        return auth is not None and auth.type == "bearer" and auth.token == self.api_key

    def _get_run(self, request: Request, project_id: str, run_id: str) -> Response:
        if not self._is_authorized(request):
            return _error_response(401, "unauthorized")
        with self._lock:
            run = self._runs.get((project_id, run_id))
            body = None if run is None else json.dumps({"run": run})
        if body is None:
            return _error_response(404, "not_found")
        return Response(body, 200, mimetype="application/json")

    def _mint_ticket(self, request: Request, kind: str, project_id: str,
                     stream_id: str) -> Response:
        if not self._is_authorized(request):
            return _error_response(401, "unauthorized")
        key = _StreamKey(kind, project_id, stream_id)
        ttl = self.ticket_ttl
        ticket = secrets.token_urlsafe(32)
        expires_at = time.time() + ttl
        with self._lock:
            if key not in self._streams:
                return _error_response(404, "not_found")
            self._tickets[ticket] = _Ticket(key, expires_at)
            self._tickets_minted += 1
        body = {"ticket": ticket, "expiresAt": _iso_utc(expires_at), "expiresInSeconds": ttl}
        if self.include_ws_url:
            query = urllib.parse.urlencode({"ticket": ticket})
            scheme = "ws" if self.ssl_context is None else "wss"
            body["wsUrl"] = f"{scheme}://{self._netloc}/api{key.path}/ws?{query}"
        return _json_response(200, body)

    # -- WebSocket serving -------------------------------------------------------------

    def _open_socket(self, request: Request, kind: str, project_id: str,
                     stream_id: str) -> Response:
        """Refuse the upgrade with an error response, or serve the socket until it ends.

        Once upgraded this never returns: it raises _WebSocketEnded for werkzeug.
        """
        key = _StreamKey(kind, project_id, stream_id)
        rejection = self._take_rejection(key)
        if rejection is not None and rejection.status is not None:
            return _error_response(rejection.status, _error_code(rejection.status))
        problem = self._ticket_problem(request.args.get("ticket", ""), key)
        if problem is not None:
            return _error_response(404 if problem == "not_found" else 401, problem)
        conn = _Connection(key, on_reader_exit=self._end_connection)
        conn.accept(request.environ, is_silent=lambda: self._is_silenced(key))
        try:
            if self._register(conn, None if rejection is None else rejection.close_code):
                self._pump(conn)
        finally:
            self._retire(conn)
        raise _WebSocketEnded()

    def _take_rejection(self, key: _StreamKey) -> _Rejection | None:
        with self._lock:
            return _take_first(self._rejections, lambda rejection: rejection.target.matches(key))

    def _ticket_problem(self, value: str, key: _StreamKey) -> str | None:
        """Check and use a ticket; return the error code when it cannot open ``key``."""
        with self._lock:
            if key not in self._streams:
                return "not_found"
            ticket = self._tickets.get(value)
            if ticket is None or ticket.key != key or (ticket.used and self.single_use_tickets):
                return "invalid_ticket"
            if time.time() >= ticket.expires_at:
                return "ticket_expired"
            ticket.used = True
            return None

    def _register(self, conn: _Connection, close_code: int | None) -> bool:
        """Queue the connection's first frames and subscribe it; False if stopping."""
        with self._lock:
            self._open.add(conn)
            self._connections += 1
            if self._server is None:
                return False
            if close_code is not None:
                conn.outbox.put(_Close(close_code))
                return True
            plan = _take_first(self._drop_plans, lambda plan: plan.target.matches(conn.key))
            if plan is not None:
                conn.frames_left = plan.frames
            stream = self._streams[conn.key]
            for frame in stream.history:
                conn.outbox.put(frame)
            if stream.finish is None:
                stream.subscribers.add(conn)
            else:
                conn.outbox.put(stream.finish)
        logger.debug("%s socket open for %s/%s", *conn.key)
        return True

    def _pump(self, conn: _Connection) -> None:
        """Send the outbox in order until the socket ends, closes, or uses its frames."""
        while conn.frames_left != 0:
            item = conn.outbox.get()
            if not self._wait_until_audible(conn):  # the item may be _ENDED itself
                return
            if isinstance(item, _Close):
                if conn.write(item):
                    conn.await_reader(_CLOSE_GRACE_SECONDS)
                return
            if not conn.write(item):
                return

    def _wait_until_audible(self, conn: _Connection) -> bool:
        """Block while the connection's stream is silenced; False once it has ended."""
        with self._changed:
            self._changed.wait_for(lambda: conn.ended or not self._is_silenced(conn.key))
            return not conn.ended

    def _end_connection(self, conn: _Connection) -> None:
        """Mark a connection ended and wake its sender, wherever that waits."""
        with self._changed:
            conn.ended = True
            self._changed.notify_all()
        conn.outbox.put(_ENDED)

    def _cut(self, conn: _Connection) -> None:
        self._end_connection(conn)
        conn.shutdown()

    def _retire(self, conn: _Connection) -> None:
        """Release a finished connection's socket and reader thread; note its close code."""
        # Ends the reader if still running, and werkzeug's keep-alive loop (no
        # "Connection: close" went out on this socket) reads EOF instead of waiting.
        conn.shutdown()
        conn.await_reader()
        code = conn.client_close_code()
        with self._lock:
            self._open.discard(conn)
            self._streams[conn.key].subscribers.discard(conn)
            if code is not None:
                self._client_close_codes.append(code)
        logger.debug("%s socket closed for %s/%s", *conn.key)


# -- Command line ----------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Run the fake from the command line; return the exit status."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    if not (args.allow_remote or _is_loopback(args.host)):
        parser.error(f"--host {args.host!r} is not loopback: it would serve the API key to the "
                     "network; add --allow-remote if you mean it")
    return args.command(args)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m rakerone_fake",
        description="Serve a fake RakerOne API (HTTP and WebSockets on one port).",
    )
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default: %(default)s; loopback only"
                             " unless --allow-remote)")
    parser.add_argument("--allow-remote", action="store_true",
                        help="allow a --host that other machines can reach")
    parser.add_argument("--port", type=int, default=0,
                        help="port to bind (default: 0, a free one)")
    parser.add_argument("--api-key", default="test-key",
                        help="bearer key to accept (default: %(default)s)")
    parser.set_defaults(command=_serve)
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    serve = commands.add_parser("serve",
                                help="serve a sample run and brief until Ctrl-C (the default)")
    serve.set_defaults(command=_serve)
    demo = commands.add_parser("demo", help="run a scripted playbook run and follow it with the real client")
    demo.add_argument("--pace", type=_pace, default=_DEMO_TICK_SECONDS, metavar="SECONDS",
                      help="time between the story's steps (default: %(default)s; 0 plays it at once)")
    demo.set_defaults(command=_demo)
    return parser


def _serve(args: argparse.Namespace) -> int:
    """Serve the sample run and brief, print the variables to export, wait for Ctrl-C."""
    fake = FakeRakerOne(args.api_key, args.host, args.port, allow_remote=args.allow_remote)
    fake.add_run(SAMPLE_PROJECT_ID, SAMPLE_RUN)
    fake.finish_run_stream(SAMPLE_PROJECT_ID, SAMPLE_RUN["id"])  # the run has completed
    fake.add_brief(SAMPLE_PROJECT_ID, SAMPLE_BRIEF_ID)
    with fake:
        print(f"export RAKERONE_BASE_URL={shlex.quote(fake.base_url)}")
        print(f"export RAKERONE_API_KEY={shlex.quote(fake.api_key)}", flush=True)
        print(f"# run {SAMPLE_PROJECT_ID}/{SAMPLE_RUN['id']}, brief {SAMPLE_BRIEF_ID};"
              " Ctrl-C stops", file=sys.stderr)
        try:
            # Wake up now and then: when the kernel hands SIGINT to a server thread,
            # Python raises KeyboardInterrupt only once the main thread runs again.
            while True:
                time.sleep(_SIGNAL_POLL_SECONDS)
        except KeyboardInterrupt:
            pass
    return 0


# -- Demo ------------------------------------------------------------------------------

_DEMO_PROJECT, _DEMO_BRIEF = "proj_demo", "brief_demo"
_DEMO_RUNS = ("run_demo", "run_nightly")
_DEMO_STEPS = (("step_001", "Initialize playbook"), ("step_002", "Run AI agent"), ("step_003", "Notify team"))
_DEMO_AGENT_LINES = ("Reading the brief", "Drafting the plan", "Checking the plan against the goals")
_DEMO_BRIEF_LINES = ("Goals: weekly churn report for the sales team", "Scope: EMEA accounts only",
                     "Format: one page, three charts", "Brief shaped: ready for a playbook")
_DEMO_TICK_SECONDS = 0.25


def _pace(text: str) -> float:
    """--pace: a number of seconds from 0 to 10."""
    seconds = float(text)  # argparse turns the ValueError into a usage error
    if not 0 <= seconds <= 10:
        raise argparse.ArgumentTypeError(f"{text} is not between 0 and 10 seconds")
    return seconds


def _demo(args: argparse.Namespace) -> int:
    """Serve runs that progress for a few seconds and follow them with the real client."""
    import os

    import rakerone  # the demo drives the real client; the client never imports the fake

    fake = FakeRakerOne(args.api_key, args.host, args.port, allow_remote=args.allow_remote)
    for run_id in _DEMO_RUNS:
        steps = [{"stepId": step_id, "name": name, "status": "pending"} for step_id, name in _DEMO_STEPS]
        fake.add_run(_DEMO_PROJECT, {"id": run_id, "projectId": _DEMO_PROJECT, "status": "queued",
                                     "triggeredBy": "demo", "steps": steps, "metadata": {"environment": "demo"}})
    fake.add_brief(_DEMO_PROJECT, _DEMO_BRIEF)
    first_run, nightly_run = _DEMO_RUNS
    with fake, rakerone.Client(fake.api_key, base_url=fake.base_url) as client:
        # The command line reads its configuration from the environment, like a cron job.
        os.environ.update(RAKERONE_BASE_URL=fake.base_url, RAKERONE_API_KEY=fake.api_key)
        print(f"RakerOne demo: a fake API at {fake.base_url}, no network and no account needed.\n")
        print(f"$ rakerone run get {_DEMO_PROJECT} {first_run}", flush=True)
        rakerone.main(["run", "get", _DEMO_PROJECT, first_run])

        print(f"\n>>> for event in client.iter_run_events({_DEMO_PROJECT!r}, {first_run!r}):", flush=True)
        with _playing(_play_run, fake, first_run, args.pace):
            started = time.monotonic()
            for event in client.iter_run_events(_DEMO_PROJECT, first_run):
                print(f"  +{time.monotonic() - started:4.1f}s  {event.type:<14} {_describe(event.data)}",
                      flush=True)
            print("  (the server closed the stream with 1000, so the loop ends)")

        print(f"\n$ rakerone run wait {_DEMO_PROJECT} {nightly_run} --timeout 60    # in cron", flush=True)
        with _playing(_play_run, fake, nightly_run, args.pace):
            code = rakerone.main(["run", "wait", _DEMO_PROJECT, nightly_run, "--timeout", "60"])
        print(f"$ echo $?\n{code}    # 0: the run succeeded; 1: it failed; 124: still running at the deadline")

        print(f"\n>>> for entry in client.iter_brief_events({_DEMO_PROJECT!r}, {_DEMO_BRIEF!r}):", flush=True)
        with _playing(_play_brief, fake, args.pace):
            for entry in client.iter_brief_events(_DEMO_PROJECT, _DEMO_BRIEF):
                print(f"  {entry.id}  {_describe(entry.data)}", flush=True)
    print("\nTry your own scripts on it: `python -m rakerone_fake` serves a sample run and prints\n"
          "the RAKERONE_BASE_URL and RAKERONE_API_KEY to export.")
    return 0


@contextlib.contextmanager
def _playing(script: typing.Callable[..., None], *args: object) -> typing.Iterator[None]:
    """Run a demo script (the server's side of the story) on a thread, joined on exit."""
    thread = threading.Thread(target=script, args=args, name="rakerone-fake-demo", daemon=True)
    thread.start()
    try:
        yield
    finally:
        thread.join()


def _play_run(fake: FakeRakerOne, run_id: str, pace: float) -> None:
    """A run moves through its steps, with an event for each change, then completes."""
    event_numbers = iter(range(1, 1000))
    steps = [{"stepId": step_id, "name": name, "status": "pending"} for step_id, name in _DEMO_STEPS]

    def emit(event_type: str, **data: object) -> None:
        fake.emit_run_event(_DEMO_PROJECT, run_id,
                            {"type": event_type, "id": f"evt_{next(event_numbers):03d}", "data": data})
        time.sleep(pace)

    def set_step(step: dict, status: str) -> None:
        step.update({"status": status, ("finishedAt" if status == "success" else "startedAt"): _iso_utc(time.time())})
        fake.update_run(_DEMO_PROJECT, run_id, steps=[dict(each) for each in steps])

    fake.update_run(_DEMO_PROJECT, run_id, status="running", startedAt=_iso_utc(time.time()))
    emit("run.started", status="running")
    for step in steps:
        set_step(step, "running")
        emit("step.started", stepId=step["stepId"], name=step["name"])
        if step["stepId"] == "step_002":
            for line in _DEMO_AGENT_LINES:
                emit("agent.log", stepId=step["stepId"], message=line)
        set_step(step, "success")
        emit("step.finished", stepId=step["stepId"], name=step["name"], status="success")
    fake.update_run(_DEMO_PROJECT, run_id, status="completed", finishedAt=_iso_utc(time.time()))
    emit("run.finished", status="completed")
    fake.finish_run_stream(_DEMO_PROJECT, run_id)


def _play_brief(fake: FakeRakerOne, pace: float) -> None:
    """A brief's shaping log grows a line at a time, then the brief is shaped."""
    for number, line in enumerate(_DEMO_BRIEF_LINES, 1):
        fake.emit_brief_event(_DEMO_PROJECT, _DEMO_BRIEF,
                              {"type": "shaping.log", "id": f"log_{number:03d}", "data": {"message": line}})
        time.sleep(pace)
    fake.finish_brief_stream(_DEMO_PROJECT, _DEMO_BRIEF)


def _describe(data: object) -> str:
    """One readable line for a demo event's data."""
    if isinstance(data, dict):
        return str(data.get("message") or data.get("name") or data.get("status") or json.dumps(data))
    return json.dumps(data)


if __name__ == "__main__":
    sys.exit(main())
