"""Tests for rakerone: HTTP with `responses`, streams and the CLI against the real fake."""

from __future__ import annotations

import base64
import contextlib
import datetime
import gc
import gzip
import http.server
import importlib.util
import json
import logging
import math
import os
import pickle
import pty
import random
import re
import select
import selectors
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import traceback
import urllib.parse
import uuid
import zlib
from typing import Optional

import h11
import hypothesis
import hypothesis.strategies
import pytest
import requests
import responses
import urllib3
import wsproto
import wsproto.events

import rakerone
import rakerone_fake

API_KEY = "sk-live-0123456789abcdef"
BASE_URL = "https://api.example.test/api"
RUN_URL = f"{BASE_URL}/projects/proj_9876543210/playbook-runs/a1b2c3d4-e5f6-7890-ab12-cd34ef567890"

# The examples of ../shared/seeds/, verbatim (the run is kept once, in the fake).
SEED_RUN_RESPONSE = {"run": rakerone_fake.SAMPLE_RUN}
SEED_TICKET = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJyb3VuSWQiOiI1ZjY3Y2Q4MC1hY2YxLTQ3NzktYmYxMy1kYjYxYjYzYjYxYjYiLCJleHAiOjE2ODk0MjQ4MDB9"
    ".4f7X9vJ9Xq3vZx7v9vX9vJ9Xq3vZx7v9vX9vJ9Xq3vZx7v9vX9vJ9Xq3vZx7v9v"
)
SEED_TICKET_RESPONSE = {
    "ticket": SEED_TICKET,
    "expiresAt": "2024-06-15T12:00:00Z",
    "expiresInSeconds": 300,
    "wsUrl": "wss://app.raker.one/api/projects/123e4567-e89b-12d3-a456-426614174000/playbook-runs/"
    "5f67cd80-acf1-4779-bf13-db61b63b61b6/ws?ticket=" + SEED_TICKET,
}
UTC = datetime.timezone.utc


# What changes how requests, urllib3, websocket-client or ssl behave, read from their
# sources: every `*_proxy` variable (urllib's getproxies_environment, websocket-client's
# http_proxy / https_proxy / no_proxy), the CA bundles of requests (REQUESTS_CA_BUNDLE,
# CURL_CA_BUNDLE) and websocket-client (WEBSOCKET_CLIENT_CA_BUNDLE), OpenSSL's default
# trust store (SSL_CERT_FILE, SSL_CERT_DIR), TLS key logging (SSLKEYLOGFILE) and ~/.netrc
# credentials, which requests would put in the Authorization header.
LIBRARY_ENVIRONMENT = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "WEBSOCKET_CLIENT_CA_BUNDLE",
                       "SSL_CERT_FILE", "SSL_CERT_DIR", "SSLKEYLOGFILE")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    """Run every test as on a machine with no proxy, CA bundle, netrc or RAKERONE_ setting."""
    for name in list(os.environ):
        if name.lower().endswith("_proxy") or name.startswith("RAKERONE_") or name in LIBRARY_ENVIRONMENT:
            monkeypatch.delenv(name)
    monkeypatch.setenv("NETRC", os.devnull)


class SkippingClock:
    """rakerone's clock, with sleeps that skip ahead instead of waiting: budgets, backoffs
    and deadlines are tested without waiting for them. Each sleep is recorded, then
    ``then(seconds)`` runs, if set (to restart a server after so long, say)."""

    def __init__(self) -> None:
        self.skipped = 0.0
        self.sleeps: list = []
        self.then = None

    def now(self) -> float:
        return time.monotonic() + self.skipped

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.skipped += seconds
        if self.then is not None:
            self.then(seconds)


@pytest.fixture
def clock(monkeypatch):
    clock = SkippingClock()
    monkeypatch.setattr(rakerone, "_clock", clock)
    return clock


@pytest.fixture
def sleeps(clock):
    return clock.sleeps


@pytest.fixture
def client(sleeps):
    with rakerone.Client(API_KEY, base_url=BASE_URL) as client:
        yield client


@pytest.fixture
def mocked():
    with responses.RequestsMock() as mock:
        yield mock


@pytest.fixture
def refused_port():
    """A loopback port bound for the test's duration but not listening: connections are refused."""
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))
        yield bound.getsockname()[1]


class TcpPeer:
    """A TCP server on 127.0.0.1 serving each connection on a thread of its own, with
    ``answer(conn, stopping)`` or a subclass's ``serve(conn)``. Leaving the with block
    sets ``stopping``, shuts down every connection (and every socket given to ``track``)
    and joins every thread it started."""

    def __init__(self, answer=None) -> None:
        self.answer = answer
        self.connections = 0
        self.stopping = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=16)
        self._listener.settimeout(0.05)
        self.lock = threading.Lock()
        self._sockets: list = []
        self._threads: list = []
        self._thread = threading.Thread(target=self._accept, name=type(self).__name__)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self._listener.getsockname()[1]}"

    @property
    def base_url(self) -> str:
        return f"http://{self.address}/api"

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stopping.set()
        self._thread.join()
        with self.lock:
            sockets, threads = list(self._sockets), list(self._threads)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:  # closed already
                pass
        for thread in threads:
            thread.join()
        self._listener.close()

    def track(self, sock: socket.socket) -> socket.socket:
        """Have ``sock`` shut down on leaving too (a proxy's upstream connection)."""
        with self.lock:
            self._sockets.append(sock)
        return sock

    def serve(self, conn: socket.socket) -> None:
        self.answer(conn, self.stopping)

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except socket.timeout:
                continue
            self.connections += 1
            thread = threading.Thread(target=self._serve, args=(self.track(conn),),
                                      name=f"{type(self).__name__}-connection")
            with self.lock:
                self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            try:
                self.serve(conn)
            except OSError:  # the client may leave at any point
                pass


def next_http_event(conn: socket.socket, http: h11.Connection, stopping: threading.Event) -> object:
    """The next h11 event read from ``conn`` (which has a short timeout), or None once
    ``stopping`` is set or the connection fails."""
    while not stopping.is_set():
        event = http.next_event()
        if event is not h11.NEED_DATA:
            return event
        try:
            http.receive_data(conn.recv(65536))
        except socket.timeout:
            continue
        except OSError:
            return None
    return None


def send_h11_json(conn: socket.socket, http: h11.Connection, body: dict) -> None:
    """Answer 200 with ``body`` as JSON, and close."""
    data = json.dumps(body).encode()
    conn.sendall(http.send(h11.Response(status_code=200, headers=[
        ("Content-Type", "application/json"), ("Content-Length", str(len(data))),
        ("Connection", "close")])) + http.send(h11.Data(data=data)) + http.send(h11.EndOfMessage()))


class PingCountingPeer(TcpPeer):
    """One run stream on 127.0.0.1 that counts the client's pings and answers each with a pong.

    Served with h11 (the ticket request) and wsproto (the WebSocket): it mints a ticket,
    accepts one socket, sends event ``e1``, then stays quiet except for pongs until it has
    answered ``pings_before_e2`` pings (or ``give_up_after`` seconds passed), then sends
    ``e2`` and waits for the client's close.
    """

    def __init__(self, pings_before_e2: int, give_up_after: float = 3.0) -> None:
        super().__init__()
        self.pings_before_e2 = pings_before_e2
        self.give_up_after = give_up_after
        self.pings_answered = 0
        self.upgrades = 0
        self.quiet_seconds = 0.0

    def serve(self, conn: socket.socket) -> None:
        conn.settimeout(0.05)
        http = h11.Connection(h11.SERVER)
        event = next_http_event(conn, http, self.stopping)
        if not isinstance(event, h11.Request):
            return
        if event.method == b"POST":
            send_h11_json(conn, http, {"ticket": "ping-test-ticket"})
            return
        ws = wsproto.WSConnection(wsproto.ConnectionType.SERVER)
        ws.initiate_upgrade_connection(event.headers, event.target)
        conn.sendall(ws.send(wsproto.events.AcceptConnection()))
        self.upgrades += 1
        self._stream(conn, ws)

    def _stream(self, conn: socket.socket, ws: wsproto.WSConnection) -> None:
        conn.sendall(ws.send(wsproto.events.TextMessage(data=json.dumps({"type": "tick", "id": "e1"}))))
        quiet_since = time.monotonic()
        e2_sent = False
        while not self.stopping.is_set():
            try:
                data = conn.recv(65536)
            except socket.timeout:
                data = None
            if data == b"":
                return
            if data:
                ws.receive_data(data)
            for event in ws.events():
                if isinstance(event, wsproto.events.Ping):
                    conn.sendall(ws.send(event.response()))
                    self.pings_answered += 1
                elif isinstance(event, wsproto.events.CloseConnection):
                    conn.sendall(ws.send(event.response()))
                    return
            quiet = time.monotonic() - quiet_since
            if not e2_sent and (self.pings_answered >= self.pings_before_e2 or quiet >= self.give_up_after):
                self.quiet_seconds = quiet
                conn.sendall(ws.send(wsproto.events.TextMessage(data=json.dumps({"type": "tick", "id": "e2"}))))
                e2_sent = True


# -- Models ----------------------------------------------------------------------------


def test_playbook_run_reads_every_field_of_the_seed_example():
    run = rakerone.PlaybookRun.from_dict(SEED_RUN_RESPONSE["run"])

    assert run.id == "a1b2c3d4-e5f6-7890-ab12-cd34ef567890"
    assert run.project_id == "proj_9876543210"
    assert run.status == "completed"
    assert run.started_at == datetime.datetime(2024, 6, 10, 9, 15, tzinfo=UTC)
    assert run.finished_at == datetime.datetime(2024, 6, 10, 9, 45, tzinfo=UTC)
    assert run.triggered_by == "user_123456"
    assert [step.name for step in run.steps] == ["Initialize playbook", "Run AI agent", "Notify team"]
    assert run.steps[1] == rakerone.RunStep(
        step_id="step_002", name="Run AI agent", status="success",
        started_at=datetime.datetime(2024, 6, 10, 9, 17, tzinfo=UTC),
        finished_at=datetime.datetime(2024, 6, 10, 9, 40, tzinfo=UTC),
        raw=SEED_RUN_RESPONSE["run"]["steps"][1],
    )
    assert run.metadata == {"environment": "production", "priority": "high"}
    assert run.raw == SEED_RUN_RESPONSE["run"]
    assert run.is_terminal and run.succeeded


def test_playbook_run_keeps_unknown_fields_in_raw():
    data = dict(SEED_RUN_RESPONSE["run"], costUsd=1.25, labels=["nightly"])
    data["steps"] = [dict(data["steps"][0], tokens=812)]

    run = rakerone.PlaybookRun.from_dict(data)

    assert run.raw["costUsd"] == 1.25 and run.raw["labels"] == ["nightly"]
    assert run.steps[0].raw["tokens"] == 812


def test_playbook_run_with_no_fields_is_empty_not_an_error():
    run = rakerone.PlaybookRun.from_dict({})

    assert run == rakerone.PlaybookRun()
    assert not run.is_terminal and not run.succeeded


def test_unparseable_timestamp_is_none_and_stays_in_raw():
    run = rakerone.PlaybookRun.from_dict({"startedAt": "last tuesday", "finishedAt": 1718012700})

    assert run.started_at is None and run.finished_at is None
    assert run.raw == {"startedAt": "last tuesday", "finishedAt": 1718012700}


@pytest.mark.parametrize("text, expected", [
    ("2024-06-10T09:15:00Z", datetime.datetime(2024, 6, 10, 9, 15, tzinfo=UTC)),
    ("2024-06-10T09:15:00.5Z", datetime.datetime(2024, 6, 10, 9, 15, 0, 500000, tzinfo=UTC)),
    ("2024-06-10T09:15:00.123456789Z", datetime.datetime(2024, 6, 10, 9, 15, 0, 123456, tzinfo=UTC)),
    ("2024-06-10T11:15:00+02:00", datetime.datetime(2024, 6, 10, 9, 15, tzinfo=UTC)),
    ("2024-06-10T09:15:00", datetime.datetime(2024, 6, 10, 9, 15, tzinfo=UTC)),
])
def test_timestamps_are_timezone_aware(text, expected):
    started_at = rakerone.PlaybookRun.from_dict({"startedAt": text}).started_at

    assert started_at == expected and started_at.tzinfo is not None


@pytest.mark.parametrize("fields, is_terminal, succeeded", [
    ({"status": "running"}, False, False),
    ({"status": "queued"}, False, False),
    ({"status": "COMPLETED"}, True, True),
    ({"status": "Succeeded"}, True, True),
    ({"status": "failed"}, True, False),
    ({"status": "timed-out"}, True, False),
    ({"status": "Cancelled"}, True, False),
    ({"status": "weird_new_state", "finishedAt": "2024-06-10T09:45:00Z"}, True, False),
])
def test_terminal_and_success_follow_the_documented_rule(fields, is_terminal, succeeded):
    run = rakerone.PlaybookRun.from_dict(fields)

    assert (run.is_terminal, run.succeeded) == (is_terminal, succeeded)


def test_ws_ticket_reads_the_seed_example():
    ticket = rakerone.WsTicket.from_dict(SEED_TICKET_RESPONSE)

    assert ticket.ticket == SEED_TICKET
    assert ticket.expires_at == datetime.datetime(2024, 6, 15, 12, 0, tzinfo=UTC)
    assert ticket.expires_in_seconds == 300.0
    assert ticket.ws_url == SEED_TICKET_RESPONSE["wsUrl"]
    assert ticket.raw == SEED_TICKET_RESPONSE


def test_ws_ticket_needs_only_the_ticket():
    ticket = rakerone.WsTicket.from_dict({"ticket": "t-1"})

    assert (ticket.expires_at, ticket.expires_in_seconds, ticket.ws_url) == (None, None, None)


def test_ticket_never_appears_in_repr():
    ticket = rakerone.WsTicket.from_dict(SEED_TICKET_RESPONSE)

    assert SEED_TICKET not in repr(ticket) and SEED_TICKET not in str(ticket)
    assert "expires_in_seconds=300.0" in repr(ticket)


@pytest.mark.parametrize("message, type_, id_, data", [
    ({"type": "step.started", "id": "e1", "data": {"step": 1}}, "step.started", "e1", {"step": 1}),
    ({"event": "log", "eventId": 7, "payload": "hello"}, "log", "7", "hello"),
    ({"type": "note", "text": "no data member"}, "note", None, {"type": "note", "text": "no data member"}),
    ({"id": "e2", "data": None}, None, "e2", None),
    (["not", "an", "object"], None, None, ["not", "an", "object"]),
])
def test_event_keeps_the_whole_message(message, type_, id_, data):
    event = rakerone.Event.from_message(message, datetime.datetime.now(UTC))

    assert (event.type, event.id, event.data) == (type_, id_, data)
    assert event.raw == message


# -- Configuration ---------------------------------------------------------------------


def test_missing_api_key_names_the_variable():
    with pytest.raises(rakerone.ConfigurationError, match="RAKERONE_API_KEY"):
        rakerone.Client()


def test_configuration_comes_from_the_environment(monkeypatch, mocked):
    monkeypatch.setenv("RAKERONE_API_KEY", API_KEY)
    monkeypatch.setenv("RAKERONE_BASE_URL", "https://staging.example.test/api/")
    mocked.get("https://staging.example.test/api/projects/p/playbook-runs/r", json={"run": {"id": "r"}})

    with rakerone.Client() as client:
        run = client.get_run("p", "r")

    assert client.base_url == "https://staging.example.test/api"
    assert run.id == "r"
    assert mocked.calls[0].request.headers["Authorization"] == f"Bearer {API_KEY}"


def test_default_base_url_is_production(monkeypatch):
    monkeypatch.setenv("RAKERONE_API_KEY", API_KEY)

    assert rakerone.Client().base_url == "https://app.raker.one/api"


@pytest.mark.parametrize("base_url", ["http://api.example.test/api", "http://10.0.0.8:8080/api"])
def test_plain_http_to_another_host_is_refused(base_url):
    with pytest.raises(rakerone.ConfigurationError, match="in clear"):
        rakerone.Client(API_KEY, base_url=base_url)


@pytest.mark.parametrize("base_url", ["http://127.0.0.1:8080/api", "http://localhost:3000/api", "http://[::1]:9/api"])
def test_plain_http_to_loopback_is_allowed(base_url):
    assert rakerone.Client(API_KEY, base_url=base_url).base_url == base_url


def test_plain_http_is_allowed_when_asked_for():
    client = rakerone.Client(API_KEY, base_url="http://api.example.test/api", allow_insecure_http=True)

    assert client.base_url == "http://api.example.test/api"


@pytest.mark.parametrize("options", [
    {"base_url": "ftp://api.example.test/api"},
    {"base_url": "api.example.test"},
    {"base_url": "https://user:pw@api.example.test/api"},
    {"base_url": "https://api.example.test:99999/api"},
    {"timeout": 0},
    {"timeout": -1},
    {"timeout": None},
    {"timeout": float("inf")},
    {"timeout": (1, 2, 3)},
    {"timeout": "30"},
    {"max_retries": -1},
    {"max_retries": 1.5},
    {"verify": "/no/such/ca-bundle.pem"},
    {"user_agent": "evil\r\nX-Injected: 1"},
])
def test_unusable_client_options_raise_configuration_error(options):
    with pytest.raises(rakerone.ConfigurationError):
        rakerone.Client(API_KEY, **options)


def test_api_key_with_a_line_break_is_refused():
    with pytest.raises(rakerone.ConfigurationError, match="line breaks"):
        rakerone.Client(API_KEY + "\n")


def test_requests_carry_auth_accept_and_user_agent(client, mocked):
    mocked.get(RUN_URL, json=SEED_RUN_RESPONSE)

    client.get_run("proj_9876543210", "a1b2c3d4-e5f6-7890-ab12-cd34ef567890")

    headers = mocked.calls[0].request.headers
    assert headers["Authorization"] == f"Bearer {API_KEY}"
    assert headers["Accept"] == "application/json"
    assert headers["User-Agent"].startswith(f"rakerone-python/{rakerone.__version__} ")


def test_user_agent_is_put_in_front_of_ours(mocked):
    mocked.get(f"{BASE_URL}/projects/p/playbook-runs/r", json={"run": {}})

    rakerone.Client(API_KEY, base_url=BASE_URL, user_agent="nightly-report/2.1").get_run("p", "r")

    assert mocked.calls[0].request.headers["User-Agent"].startswith("nightly-report/2.1 rakerone-python/")


def test_a_session_passed_in_is_neither_altered_nor_closed(mocked):
    session = requests.Session()
    closed = []
    session.close = lambda: closed.append(True)
    mocked.get(f"{BASE_URL}/projects/p/playbook-runs/r", json={"run": {}})

    with rakerone.Client(API_KEY, base_url=BASE_URL, session=session) as client:
        client.get_run("p", "r")

    assert "Authorization" not in session.headers
    assert closed == []


def test_a_session_passed_in_lends_its_headers(mocked):
    session = requests.Session()
    session.headers["X-Team"] = "reporting"
    mocked.get(f"{BASE_URL}/projects/p/playbook-runs/r", json={"run": {}})

    rakerone.Client(API_KEY, base_url=BASE_URL, session=session).get_run("p", "r")

    assert mocked.calls[0].request.headers["X-Team"] == "reporting"
    assert mocked.calls[0].request.headers["Authorization"] == f"Bearer {API_KEY}"


def test_a_redirect_is_not_followed_with_the_key(client, mocked):
    mocked.get(f"{BASE_URL}/projects/p/playbook-runs/r", status=302,
               headers={"Location": "https://elsewhere.example/steal"})

    with pytest.raises(rakerone.APIError, match="redirected to https://elsewhere.example/steal") as raised:
        client.get_run("p", "r")

    assert raised.value.status_code == 302
    assert len(mocked.calls) == 1


# -- Requests and ids ------------------------------------------------------------------


def test_get_run_returns_the_seed_run(client, mocked):
    mocked.get(RUN_URL, json=SEED_RUN_RESPONSE)

    run = client.get_run("proj_9876543210", "a1b2c3d4-e5f6-7890-ab12-cd34ef567890")

    assert run == rakerone.PlaybookRun.from_dict(SEED_RUN_RESPONSE["run"])


def test_mint_run_ticket_posts_to_the_run_ticket_endpoint(client, mocked):
    mocked.post(f"{BASE_URL}/projects/p/playbook-runs/r/ws-ticket", json=SEED_TICKET_RESPONSE)

    ticket = client.mint_run_ticket("p", "r")

    assert ticket.ticket == SEED_TICKET


def test_mint_brief_ticket_posts_to_the_brief_ticket_endpoint(client, mocked):
    mocked.post(f"{BASE_URL}/projects/p/briefs/b/ws-ticket", json={"ticket": "brief-ticket"})

    assert client.mint_brief_ticket("p", "b").ticket == "brief-ticket"


@pytest.mark.parametrize("run_id, encoded", [
    ("../admin", "..%2Fadmin"),
    ("a/b", "a%2Fb"),
    ("a?b=c", "a%3Fb%3Dc"),
    ("a#frag", "a%23frag"),
    ("%2F", "%252F"),
    ("ünï code", "%C3%BCn%C3%AF%20code"),
    (42, "42"),
    (uuid.UUID("5f67cd80-acf1-4779-bf13-db61b63b61b6"), "5f67cd80-acf1-4779-bf13-db61b63b61b6"),
])
def test_ids_are_encoded_as_one_path_segment(client, mocked, run_id, encoded):
    mocked.get(f"{BASE_URL}/projects/p/playbook-runs/{encoded}", json={"run": {}})

    client.get_run("p", run_id)

    assert mocked.calls[0].request.path_url == f"/api/projects/p/playbook-runs/{encoded}"


@pytest.mark.parametrize("bad_id", ["", "   ", "\t", ".", "..", None, True, 1.5, b"bytes"])
def test_bad_ids_raise_before_any_request(client, mocked, bad_id):
    with pytest.raises(rakerone.ConfigurationError) as raised:
        client.get_run("p", bad_id)

    assert isinstance(raised.value, ValueError)
    assert len(mocked.calls) == 0


@pytest.mark.parametrize("body, content_type", [
    ("<html><body>Welcome!</body></html>", "text/html"),
    ('{"id": "no run member"}', "application/json"),
    ('{"run": ["not", "an", "object"]}', "application/json"),
    ('["run"]', "application/json"),
])
def test_a_run_response_of_the_wrong_shape_is_an_api_error(client, mocked, body, content_type):
    mocked.get(f"{BASE_URL}/projects/p/playbook-runs/r", body=body, content_type=content_type)

    with pytest.raises(rakerone.UnexpectedResponseError) as raised:
        client.get_run("p", "r")

    assert isinstance(raised.value, rakerone.APIError)
    assert "GET /projects/p/playbook-runs/r" in str(raised.value)


def test_a_ticket_response_without_ticket_is_an_api_error(client, mocked):
    mocked.post(f"{BASE_URL}/projects/p/playbook-runs/r/ws-ticket", json={"expiresInSeconds": 300})

    with pytest.raises(rakerone.UnexpectedResponseError, match="ticket"):
        client.mint_run_ticket("p", "r")


# -- Errors ----------------------------------------------------------------------------


@pytest.mark.parametrize("status, error_class", [
    (400, rakerone.BadRequestError),
    (401, rakerone.AuthenticationError),
    (403, rakerone.PermissionDeniedError),
    (404, rakerone.NotFoundError),
    (409, rakerone.APIError),
    (418, rakerone.APIError),
    (429, rakerone.RateLimitError),
    (500, rakerone.ServerError),
    (503, rakerone.ServerError),
    (599, rakerone.ServerError),
])
def test_each_status_maps_to_its_error_class(mocked, status, error_class):
    client = rakerone.Client(API_KEY, base_url=BASE_URL, max_retries=0)
    mocked.get(f"{BASE_URL}/projects/p/playbook-runs/r", status=status,
               json={"error": "some_code"}, headers={"X-Request-Id": "req_42"})

    with pytest.raises(error_class) as raised:
        client.get_run("p", "r")

    error = raised.value
    assert type(error) is error_class
    assert (error.status_code, error.code, error.request_id) == (status, "some_code", "req_42")
    assert f"HTTP {status}" in str(error) and "req_42" in str(error)


def test_invalid_body_issues_are_exposed(client, mocked):
    issues = [{"path": ["runId"], "message": "Expected uuid"}]
    mocked.post(f"{BASE_URL}/projects/p/playbook-runs/r/ws-ticket", status=400,
                json={"error": "invalid_body", "issues": issues})

    with pytest.raises(rakerone.BadRequestError) as raised:
        client.mint_run_ticket("p", "r")

    assert raised.value.code == "invalid_body"
    assert raised.value.issues == tuple(issues)
    assert "Expected uuid" in str(raised.value)


def test_not_found_message_says_what_to_check(client, mocked):
    mocked.get(f"{BASE_URL}/projects/p/playbook-runs/missing", status=404, json={"error": "not_found"})

    with pytest.raises(rakerone.NotFoundError) as raised:
        client.get_run("p", "missing")

    assert str(raised.value) == (
        "GET /projects/p/playbook-runs/missing failed with HTTP 404 (not_found); "
        "check the ids and the base URL"
    )


def test_html_502_page_gives_a_server_error_with_an_excerpt(mocked):
    client = rakerone.Client(API_KEY, base_url=BASE_URL, max_retries=0)
    page = "<html>\n<head><title>502 Bad Gateway</title></head>\n<body>nginx</body>\n</html>" + " " * 5000
    mocked.get(f"{BASE_URL}/projects/p/playbook-runs/r", status=502, body=page, content_type="text/html")

    with pytest.raises(rakerone.ServerError) as raised:
        client.get_run("p", "r")

    message = str(raised.value)
    assert raised.value.status_code == 502 and raised.value.code is None
    assert "not JSON (text/html)" in message and "502 Bad Gateway" in message
    assert len(message) < 500


# -- Retries ---------------------------------------------------------------------------


def test_a_503_is_retried_then_succeeds(client, mocked, sleeps):
    url = f"{BASE_URL}/projects/p/playbook-runs/r"
    mocked.get(url, status=503, json={"error": "unavailable"})
    mocked.get(url, json={"run": {"id": "r"}})

    assert client.get_run("p", "r").id == "r"
    assert len(mocked.calls) == 2
    assert len(sleeps) == 1 and 0 <= sleeps[0] <= rakerone.RETRY_BACKOFF_BASE


def test_backoff_is_exponential_with_jitter_and_gives_up_after_max_retries(mocked, sleeps, monkeypatch):
    monkeypatch.setattr(rakerone.random, "uniform", lambda low, high: high)
    client = rakerone.Client(API_KEY, base_url=BASE_URL, max_retries=5)
    mocked.get(f"{BASE_URL}/projects/p/playbook-runs/r", status=500, json={"error": "boom"})

    with pytest.raises(rakerone.ServerError):
        client.get_run("p", "r")

    assert len(mocked.calls) == 6
    assert sleeps == [0.5, 1.0, 2.0, 4.0, 8.0]


@pytest.mark.parametrize("retry_after, expected", [("7", 7.0), ("0.25", 0.25)])
def test_retry_after_seconds_are_honoured(client, mocked, sleeps, retry_after, expected):
    url = f"{BASE_URL}/projects/p/playbook-runs/r/ws-ticket"
    mocked.post(url, status=429, json={"error": "rate_limited"}, headers={"Retry-After": retry_after})
    mocked.post(url, json={"ticket": "t"})

    assert client.mint_run_ticket("p", "r").ticket == "t"
    assert sleeps == [expected]


def test_retry_after_http_date_is_honoured(client, mocked, sleeps):
    url = f"{BASE_URL}/projects/p/playbook-runs/r"
    when = datetime.datetime.now(UTC) + datetime.timedelta(seconds=30)
    mocked.get(url, status=503, headers={"Retry-After": when.strftime("%a, %d %b %Y %H:%M:%S GMT")})
    mocked.get(url, json={"run": {}})

    client.get_run("p", "r")

    assert 27 <= sleeps[0] <= 30


def test_retry_after_beyond_the_cap_raises_at_once_with_retry_after(client, mocked, sleeps):
    mocked.get(f"{BASE_URL}/projects/p/playbook-runs/r", status=429, headers={"Retry-After": "3600"},
               json={"error": "rate_limited"})

    with pytest.raises(rakerone.RateLimitError) as raised:
        client.get_run("p", "r")

    assert raised.value.retry_after == 3600.0
    assert "retry after 3600 s" in str(raised.value)
    assert sleeps == [] and len(mocked.calls) == 1


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 422])
def test_client_errors_are_not_retried(client, mocked, sleeps, status):
    mocked.get(f"{BASE_URL}/projects/p/playbook-runs/r", status=status, json={"error": "nope"})

    with pytest.raises(rakerone.APIError):
        client.get_run("p", "r")

    assert len(mocked.calls) == 1 and sleeps == []


def test_connection_refused_is_an_api_connection_error_after_retries(sleeps, refused_port):
    client = rakerone.Client(API_KEY, base_url=f"http://127.0.0.1:{refused_port}/api", max_retries=2)

    with pytest.raises(rakerone.APIConnectionError) as raised:
        client.get_run("p", "r")

    assert type(raised.value) is rakerone.APIConnectionError
    assert "Connection refused" in str(raised.value) and "after 3 attempts" in str(raised.value)
    assert "object at 0x" not in str(raised.value)
    assert len(sleeps) == 2


@pytest.mark.slow
def test_a_server_that_never_answers_is_an_api_timeout_error(sleeps):
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # accepts connections in the kernel, never answers
        port = silent.getsockname()[1]
        client = rakerone.Client(API_KEY, base_url=f"http://127.0.0.1:{port}/api", timeout=0.2, max_retries=1)

        with pytest.raises(rakerone.APITimeoutError, match="timed out after 0.2 s"):
            client.get_run("p", "r")
        client.close()

    assert len(sleeps) == 1


# -- Secrets ---------------------------------------------------------------------------


def test_api_key_never_appears_in_repr_errors_or_logs(mocked, caplog, sleeps):
    caplog.set_level(logging.DEBUG)
    client = rakerone.Client(API_KEY, base_url=BASE_URL, max_retries=1)
    echo = f"<html>Authorization: Bearer {API_KEY}</html>"
    mocked.get(f"{BASE_URL}/projects/p/playbook-runs/r", status=502, body=echo, content_type="text/html")

    with pytest.raises(rakerone.ServerError) as raised:
        client.get_run("p", "r")

    shown = [repr(client), repr(client._transport), repr(client._transport._auth), str(raised.value), repr(raised.value), caplog.text,
             "".join(traceback.format_exception(type(raised.value), raised.value, raised.value.__traceback__))]
    assert all(API_KEY not in text for text in shown)
    assert "Bearer ***" in str(raised.value)
    assert "retry 1 of 1" in caplog.text


# -- Shortcuts -------------------------------------------------------------------------


def test_module_shortcuts_use_the_environment(monkeypatch, mocked):
    monkeypatch.setenv("RAKERONE_API_KEY", API_KEY)
    monkeypatch.setenv("RAKERONE_BASE_URL", BASE_URL)
    mocked.get(f"{BASE_URL}/projects/p/playbook-runs/r", json={"run": {"id": "r"}})
    mocked.post(f"{BASE_URL}/projects/p/playbook-runs/r/ws-ticket", json={"ticket": "t1"})
    mocked.post(f"{BASE_URL}/projects/p/briefs/b/ws-ticket", json={"ticket": "t2"})

    assert rakerone.get_run("p", "r").id == "r"
    assert rakerone.mint_run_ticket("p", "r").ticket == "t1"
    assert rakerone.mint_brief_ticket("p", "b").ticket == "t2"


# -- Any endpoint: client.request ------------------------------------------------------


def test_request_fills_placeholders_with_encoded_ids_and_sends_params(client, mocked):
    mocked.get(f"{BASE_URL}/projects/p%2F1/briefs/..%20b", json={"briefs": []})

    body = client.request("GET", "/projects/{}/briefs/{}", "p/1", ".. b", params={"limit": 50})

    assert body == {"briefs": []}
    assert mocked.calls[0].request.url == f"{BASE_URL}/projects/p%2F1/briefs/..%20b?limit=50"


def test_request_sends_a_json_body_with_the_key(client, mocked):
    mocked.post(f"{BASE_URL}/projects/p1/playbook-runs", status=201, json={"run": {"id": "r9"}})

    body = client.request("post", "/projects/{}/playbook-runs", "p1", json={"playbookId": "pb_1"})

    sent = mocked.calls[0].request
    assert body == {"run": {"id": "r9"}}
    assert sent.method == "POST" and json.loads(sent.body) == {"playbookId": "pb_1"}
    assert sent.headers["Authorization"] == f"Bearer {API_KEY}"
    assert sent.headers["Content-Type"] == "application/json"


@pytest.mark.parametrize("status, body", [(204, b""), (200, b""), (200, b"  \n")])
def test_request_returns_none_for_an_empty_answer(client, mocked, status, body):
    mocked.delete(f"{BASE_URL}/projects/p1", status=status, body=body)

    assert client.request("DELETE", "/projects/{}", "p1") is None


@pytest.mark.parametrize("status, error_class", [(400, rakerone.BadRequestError), (401, rakerone.AuthenticationError),
                                                 (404, rakerone.NotFoundError), (409, rakerone.APIError)])
def test_request_errors_are_the_same_classes_as_everywhere(client, mocked, status, error_class):
    mocked.post(f"{BASE_URL}/projects/p1/briefs", status=status,
                json={"error": "invalid_body", "issues": [{"path": ["title"], "message": "Required"}]})

    with pytest.raises(error_class) as raised:
        client.request("POST", "/projects/{}/briefs", "p1", json={})

    assert raised.value.status_code == status and raised.value.code == "invalid_body"
    assert raised.value.issues == ({"path": ["title"], "message": "Required"},)


@pytest.mark.parametrize("path, ids", [
    ("projects/{}", ("p",)),                    # not relative to the base URL
    ("https://evil.invalid/api/x", ()),          # a whole URL
    ("//evil.invalid/x", ()),                    # a network-path reference
    ("/projects/../admin", ()),                  # a dot segment
    ("/projects/%2e%2e/admin", ()),              # an encoded dot segment
    ("/projects/{}/briefs/{}", ("p",)),          # too few ids
    ("/projects/{}", ("p", "q")),                # too many ids
    ("/projects/{id}", ("p",)),                  # a named placeholder
    ("/projects?limit=5", ()),                   # a query in the path
    ("/projects/{}", ("",)),                     # an empty id
    ("/projects/{}", ("..",)),                   # an id that would climb
], ids=repr)
def test_request_refuses_an_unusable_path_before_any_traffic(client, mocked, path, ids):
    with pytest.raises(rakerone.ConfigurationError):
        client.request("GET", path, *ids)

    assert len(mocked.calls) == 0


def test_request_refuses_an_unusable_method(client, mocked):
    with pytest.raises(rakerone.ConfigurationError, match="method"):
        client.request("GET /x", "/projects")


def connection_refused() -> requests.ConnectionError:
    """What requests raises when nothing listens: nothing was sent."""
    return requests.ConnectionError(urllib3.exceptions.NewConnectionError(None, "Connection refused"))


def connection_reset() -> requests.ConnectionError:
    """What requests raises when the connection drops after the request went out."""
    return requests.ConnectionError(urllib3.exceptions.ProtocolError("Connection aborted.", ConnectionResetError()))


# (method, failure, attempts): POST and PATCH are resent only when the server cannot have acted.
#: Attempts with max_retries=2, written out: (failures, then the attempts for each method).
RETRY_ATTEMPTS = {
    #          refused  reset  429  500  502  503  504  520
    "GET":     (3,      3,     3,   3,   3,   3,   3,   3),
    "HEAD":    (3,      3,     3,   3,   3,   3,   3,   3),
    "OPTIONS": (3,      3,     3,   3,   3,   3,   3,   3),
    "PUT":     (3,      3,     3,   3,   3,   3,   3,   3),
    "DELETE":  (3,      3,     3,   3,   3,   3,   3,   3),
    "POST":    (3,      1,     3,   1,   1,   3,   1,   1),
    "PATCH":   (3,      1,     3,   1,   1,   3,   1,   1),
}
RETRY_TABLE = [(method, failure, attempts) for method, row in RETRY_ATTEMPTS.items()
               for failure, attempts in zip(("refused", "reset", 429, 500, 502, 503, 504, 520), row)]


@pytest.mark.parametrize("method, failure, attempts", RETRY_TABLE)
def test_request_retries_never_duplicate_a_side_effect(client, sleeps, method, failure, attempts):
    url = f"{BASE_URL}/projects/p1/things"
    mocked = responses.RequestsMock(assert_all_requests_are_fired=False)
    for _ in range(3):
        if failure == "refused":
            mocked.add(method, url, body=connection_refused())
        elif failure == "reset":
            mocked.add(method, url, body=connection_reset())
        else:
            mocked.add(method, url, status=failure, json={"error": "x"})

    with mocked:
        with pytest.raises(rakerone.RakerOneError):
            client.request(method, "/projects/{}/things", "p1", json=None if method in ("GET", "HEAD") else {})
        sent = len(mocked.calls)

    assert sent == attempts


def test_ticket_minting_is_resent_after_a_lost_answer(client, mocked, sleeps):
    url = f"{BASE_URL}/projects/p/playbook-runs/r/ws-ticket"
    mocked.post(url, body=connection_reset())
    mocked.post(url, json={"ticket": "t-2"})

    assert client.mint_run_ticket("p", "r").ticket == "t-2"
    assert len(mocked.calls) == 2


def test_module_level_request_uses_the_environment(monkeypatch, mocked):
    monkeypatch.setenv("RAKERONE_API_KEY", API_KEY)
    monkeypatch.setenv("RAKERONE_BASE_URL", BASE_URL)
    mocked.get(f"{BASE_URL}/projects", json=[{"id": "p1"}])

    assert rakerone.request("GET", "/projects") == [{"id": "p1"}]


# -- Streams against the fake ----------------------------------------------------------
# Everything below runs the real client against rakerone_fake on 127.0.0.1.

PROJECT, RUN, BRIEF = "proj_9876543210", "a1b2c3d4-e5f6-7890-ab12-cd34ef567890", "brief_1"


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else 0


def fd_targets() -> dict:
    """What each open file descriptor points at (``socket:[…]``, a pipe, a path)."""
    targets = {}
    for fd in os.listdir("/proc/self/fd") if os.path.isdir("/proc/self/fd") else ():
        try:
            targets[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # closed meanwhile, or the listing's own descriptor
            pass
    return targets


@pytest.fixture(autouse=True, scope="session")
def collector_sees_only_what_tests_make():
    """Keep what the session imported out of the garbage collector's sight: no_leaks collects
    after each test, and a full pass over pytest's, hypothesis' and the libraries' objects
    takes ~40 ms; over what the tests made, well under 1 ms."""
    gc.freeze()
    yield
    gc.unfreeze()


@pytest.fixture
def no_leaks():
    """Fail a test that leaves a thread or a socket behind (a descriptor still open a
    second after the test, garbage collected meanwhile, is a leak). The process's one
    watchdog thread is no leak: it ends by itself once idle (tested on its own)."""
    threads_before = set(threading.enumerate())
    fds_before = open_fds()
    targets_before = fd_targets()
    yield
    gc.collect()
    leaked_threads = [t for t in threading.enumerate()
                      if t not in threads_before and t.is_alive() and t.name != "rakerone-watchdog"]
    assert leaked_threads == []
    give_up = time.monotonic() + 1.0
    while open_fds() > fds_before and time.monotonic() < give_up:
        time.sleep(0.01)
        gc.collect()
    left = {fd: target for fd, target in fd_targets().items() if targets_before.get(fd) != target}
    assert open_fds() <= fds_before, f"left open: {left}"


@pytest.fixture
def fake(no_leaks, rakerone_fake):
    """The pytest plugin's fake (the environment points at it), with a running run and a brief."""
    rakerone_fake.add_run(PROJECT, dict(SEED_RUN_RESPONSE["run"], status="running", finishedAt=None))
    rakerone_fake.add_brief(PROJECT, BRIEF)
    return rakerone_fake


def run_event(n: int, **extra) -> dict:
    return dict({"type": "step.progress", "id": f"e{n}", "data": {"n": n}}, **extra)


def emit(fake, *numbers: int) -> None:
    for n in numbers:
        fake.emit_run_event(PROJECT, RUN, run_event(n))


def record_tickets(client) -> list:
    """Wrap the client's ticket minting to see every ticket it gets."""
    minted = []
    mint = client.mint_run_ticket

    def recording(*args):
        ticket = mint(*args)
        minted.append(ticket.ticket)
        return ticket

    client.mint_run_ticket = recording
    return minted


def test_stream_yields_history_and_live_events_in_order_then_ends_on_close_1000(fake, rakerone_client):
    emit(fake, 1, 2)
    received = []

    for event in rakerone_client.iter_run_events(PROJECT, RUN):
        received.append(event)
        if event.id == "e2":
            emit(fake, 3)
        elif event.id == "e3":
            fake.finish_run_stream(PROJECT, RUN)

    assert [event.id for event in received] == ["e1", "e2", "e3"]
    assert received[2].type == "step.progress" and received[2].data == {"n": 3}
    assert received[2].raw == run_event(3)
    assert received[2].received_at.tzinfo is not None
    assert fake.tickets_minted == fake.connections == 1


def test_drop_mid_stream_resumes_with_every_event_exactly_once_and_a_ticket_per_connection(fake, rakerone_client):
    emit(fake, 1, 2)
    ids = []

    for event in rakerone_client.iter_run_events(PROJECT, RUN):
        ids.append(event.id)
        if event.id == "e2":
            fake.drop_streams()
            emit(fake, 3)  # lands in history only: the socket is gone
        elif event.id == "e3":
            emit(fake, 4)
        elif event.id == "e4":
            fake.finish_run_stream(PROJECT, RUN)

    assert ids == ["e1", "e2", "e3", "e4"]
    assert fake.connections == 2
    assert fake.tickets_minted == 2


def test_events_without_ids_are_all_yielded(fake, rakerone_client):
    fake.emit_run_event(PROJECT, RUN, {"type": "log", "text": "same"})
    fake.emit_run_event(PROJECT, RUN, {"type": "log", "text": "same"})
    fake.finish_run_stream(PROJECT, RUN)

    events = list(rakerone_client.iter_run_events(PROJECT, RUN))

    assert [event.data for event in events] == [{"type": "log", "text": "same"}] * 2


def test_expired_single_use_tickets_are_replaced_on_reconnect(fake, rakerone_client):
    fake.single_use_tickets = True
    emit(fake, 1)
    ids = []

    for event in rakerone_client.iter_run_events(PROJECT, RUN):
        ids.append(event.id)
        if event.id == "e1":
            fake.expire_tickets()
            fake.drop_streams()
            emit(fake, 2)
        else:
            fake.finish_run_stream(PROJECT, RUN)

    assert ids == ["e1", "e2"]
    assert fake.tickets_minted == fake.connections == 2


def test_ticket_endpoint_503_during_reconnect_is_retried(fake, rakerone_client, sleeps):
    emit(fake, 1)
    ids = []

    for event in rakerone_client.iter_run_events(PROJECT, RUN):
        ids.append(event.id)
        if event.id == "e1":
            fake.fail_next_requests(4, 503, paths="ws-ticket")  # more than max_retries=2
            fake.drop_streams()
            emit(fake, 2)
        else:
            fake.finish_run_stream(PROJECT, RUN)

    assert ids == ["e1", "e2"]
    assert fake.connections == 2


@pytest.mark.parametrize("close_code", [1001, 1011, 1012, 1013])
def test_server_restart_close_codes_reconnect(fake, rakerone_client, close_code):
    emit(fake, 1)
    ids = []

    for event in rakerone_client.iter_run_events(PROJECT, RUN):
        ids.append(event.id)
        if event.id == "e1":
            fake.close_streams(close_code)
            emit(fake, 2)
        else:
            fake.finish_run_stream(PROJECT, RUN)

    assert ids == ["e1", "e2"] and fake.connections == 2


def test_handshake_401_raises_authentication_error_without_retrying(fake, rakerone_client):
    fake.reject_next_connections(5, status=401)

    with pytest.raises(rakerone.AuthenticationError) as raised:
        next(rakerone_client.iter_run_events(PROJECT, RUN))

    assert raised.value.status_code == 401
    assert fake.tickets_minted == 2 and fake.connections == 0  # refused twice in a row


@pytest.mark.parametrize("close_code, error_class", [
    (4401, rakerone.AuthenticationError),
    (4403, rakerone.PermissionDeniedError),
    (1008, rakerone.PermissionDeniedError),
    (4404, rakerone.NotFoundError),
])
def test_not_allowed_close_codes_raise_without_retrying(fake, rakerone_client, close_code, error_class):
    fake.reject_next_connections(5, close_code=close_code)

    with pytest.raises(error_class, match=str(close_code)):
        next(rakerone_client.iter_run_events(PROJECT, RUN))

    assert fake.connections == (2 if close_code == 4401 else 1)  # a ticket refused twice in a row


def test_unknown_run_raises_not_found(fake, rakerone_client):
    with pytest.raises(rakerone.NotFoundError):
        next(rakerone_client.iter_run_events(PROJECT, "no-such-run"))


def test_handshake_404_raises_not_found(fake, rakerone_client):
    fake.reject_next_connections(1, status=404)

    with pytest.raises(rakerone.NotFoundError):
        next(rakerone_client.iter_run_events(PROJECT, RUN))


def test_max_outage_0_never_reconnects(fake, rakerone_client):
    emit(fake, 1)
    events = rakerone_client.iter_run_events(PROJECT, RUN, max_outage=0)
    next(events)
    fake.drop_streams()

    with pytest.raises(rakerone.StreamDisconnectedError, match="max_outage=0"):
        next(events)


def test_a_frame_that_is_not_json_raises_stream_error_quoting_it(fake, rakerone_client):
    fake.send_raw_frame("<<definitely not json>>")  # no live socket yet: nothing happens
    emit(fake, 1)
    events = rakerone_client.iter_run_events(PROJECT, RUN)
    next(events)
    fake.send_raw_frame("<<definitely not json>>")

    with pytest.raises(rakerone.StreamError, match="not UTF-8 JSON: '<<definitely not json>>'"):
        next(events)


def test_a_binary_frame_holding_utf8_json_is_an_event(fake, rakerone_client):
    emit(fake, 1)
    events = rakerone_client.iter_run_events(PROJECT, RUN)
    next(events)
    fake.send_raw_frame(json.dumps({"type": "note", "id": "b1", "data": "héllo"}).encode())

    assert next(events).data == "héllo"
    events.close()


def test_a_binary_frame_that_is_not_utf8_raises_stream_error(fake, rakerone_client):
    emit(fake, 1)
    events = rakerone_client.iter_run_events(PROJECT, RUN)
    next(events)
    fake.send_raw_frame(b'{"data": "\xff\xfe"}')

    with pytest.raises(rakerone.StreamError, match="not UTF-8 JSON"):
        next(events)


@pytest.mark.slow
def test_a_silent_peer_is_detected_within_ping_interval_plus_ping_timeout(fake, rakerone_client):
    emit(fake, 1)
    events = rakerone_client.iter_run_events(PROJECT, RUN, max_outage=0, ping_interval=0.3, ping_timeout=0.3)
    next(events)
    fake.stop_answering_pings()
    started = time.monotonic()

    with pytest.raises(rakerone.StreamError, match="no answer to a ping within 0.3 s"):
        next(events)

    assert 0.5 <= time.monotonic() - started < 0.6 + 0.5


@pytest.mark.slow
def test_a_silent_peer_is_replaced_by_a_new_connection(fake, rakerone_client):
    emit(fake, 1)
    resume = threading.Timer(0.7, fake.resume_answering_pings)  # after the first is declared dead
    ids = []

    for event in rakerone_client.iter_run_events(PROJECT, RUN, ping_interval=0.2, ping_timeout=0.2):
        ids.append(event.id)
        if event.id == "e1":
            fake.stop_answering_pings()
            resume.start()
            emit(fake, 2)  # the silent connection does not deliver it; the next one does
        else:
            fake.finish_run_stream(PROJECT, RUN)
    resume.join()

    assert ids == ["e1", "e2"] and fake.connections >= 2


@pytest.mark.slow
def test_a_quiet_but_alive_stream_is_kept_open_by_pings(no_leaks):
    ping_interval, ping_timeout = 0.1, 0.3

    with PingCountingPeer(pings_before_e2=5) as peer:
        with rakerone.Client("test-key", base_url=peer.base_url, timeout=5) as client:
            events = client.iter_run_events(PROJECT, RUN, max_outage=0,
                                            ping_interval=ping_interval, ping_timeout=ping_timeout)
            ids = [next(events).id, next(events).id]
            events.close()

    assert ids == ["e1", "e2"] and peer.upgrades == 1
    assert peer.pings_answered >= 5  # sent, and answered: each pong bought another ping_timeout
    assert peer.quiet_seconds > ping_interval + ping_timeout


@pytest.mark.slow
def test_idle_timeout_raises_stream_timeout_error(fake, rakerone_client):
    emit(fake, 1)
    events = rakerone_client.iter_run_events(PROJECT, RUN, idle_timeout=0.3, ping_interval=0.1)
    next(events)
    started = time.monotonic()

    with pytest.raises(rakerone.StreamTimeoutError, match="no event for 0.3 s"):
        next(events)

    assert 0.25 <= time.monotonic() - started < 1.0
    assert fake.wait_for(lambda: fake.client_close_codes == [1000])


def test_breaking_out_early_sends_close_1000_and_releases_the_socket(fake, rakerone_client):
    emit(fake, 1, 2, 3)

    for _event in rakerone_client.iter_run_events(PROJECT, RUN):
        break

    assert fake.wait_for(lambda: fake.client_close_codes == [1000] and fake.live_connections == 0)


def test_an_exception_in_the_loop_body_also_closes_with_1000(fake, rakerone_client):
    emit(fake, 1)

    with pytest.raises(ZeroDivisionError):
        for _event in rakerone_client.iter_run_events(PROJECT, RUN):
            raise ZeroDivisionError("the loop body failed")

    assert fake.wait_for(lambda: fake.client_close_codes == [1000])


def test_brief_stream_yields_shaping_log_entries(fake, rakerone_client):
    fake.emit_brief_entry(PROJECT, BRIEF, {"type": "shaping.log", "id": "l1", "data": "Drafting goals"})
    fake.emit_brief_entry(PROJECT, BRIEF, {"type": "shaping.log", "id": "l2", "data": "Adding scope"})
    fake.finish_brief_stream(PROJECT, BRIEF)

    entries = list(rakerone_client.iter_brief_events(PROJECT, BRIEF))

    assert [entry.data for entry in entries] == ["Drafting goals", "Adding scope"]


@pytest.mark.parametrize("include_ws_url", [True, False])
def test_stream_works_with_and_without_ws_url(fake, rakerone_client, include_ws_url):
    fake.include_ws_url = include_ws_url
    emit(fake, 1)
    fake.finish_run_stream(PROJECT, RUN)

    assert [event.id for event in rakerone_client.iter_run_events(PROJECT, RUN)] == ["e1"]


def test_tickets_never_appear_in_logs_or_stream_errors(clock, fake, rakerone_client, caplog, monkeypatch):
    monkeypatch.setattr(rakerone.random, "uniform", lambda low, high: high)  # two tickets exactly
    caplog.set_level(logging.DEBUG)
    minted = record_tickets(rakerone_client)
    fake.drop_after_frames(0, connections=10)

    events = rakerone_client.iter_run_events(PROJECT, RUN, max_outage=0.25)
    with pytest.raises(rakerone.StreamError) as raised:
        next(events)

    error_text = "".join(traceback.format_exception(type(raised.value), raised.value, raised.value.__traceback__))
    assert len(minted) == 2
    assert caplog.text and "ticket=***" in caplog.text
    assert all(ticket not in caplog.text and ticket not in error_text for ticket in minted)
    assert fake.api_key not in caplog.text


@pytest.fixture(scope="session")
def certificate(tmp_path_factory):
    """A throwaway self-signed certificate for 127.0.0.1 and its key (made once: ~0.4 s)."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a certificate")
    cert, key = tmp_path_factory.mktemp("tls") / "cert.pem", tmp_path_factory.getbasetemp() / "tls-key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True, timeout=60)
    return cert, key


@pytest.fixture
def tls_fake(no_leaks, certificate):
    """The fake over https/wss with the session's self-signed certificate for 127.0.0.1."""
    cert, key = certificate
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(cert), str(key))
    with rakerone_fake.FakeRakerOne(ssl_context=context) as server:
        server.add_run(PROJECT, {"id": RUN, "status": "running"})
        emit(server, 1)
        server.finish_run_stream(PROJECT, RUN)
        yield server, str(cert)


@pytest.mark.parametrize("include_ws_url", [True, False])
def test_https_and_wss_trust_the_ca_bundle_given_as_verify(tls_fake, include_ws_url):
    fake, ca_bundle = tls_fake
    fake.include_ws_url = include_ws_url

    with rakerone.Client(fake.api_key, base_url=fake.base_url, verify=ca_bundle) as client:
        assert client.get_run(PROJECT, RUN).status == "running"
        assert [event.id for event in client.iter_run_events(PROJECT, RUN)] == ["e1"]

    assert fake.base_url.startswith("https://") and fake.connections == 1


def test_an_untrusted_certificate_fails_at_once_without_retrying(tls_fake, sleeps):
    fake, _ = tls_fake

    with rakerone.Client(fake.api_key, base_url=fake.base_url) as client:  # certifi: not trusted
        with pytest.raises(rakerone.APIConnectionError, match="TLS failed"):
            client.get_run(PROJECT, RUN)
        with pytest.raises(rakerone.APIConnectionError, match="TLS failed"):
            next(client.iter_run_events(PROJECT, RUN))

    assert sleeps == []


@pytest.mark.parametrize("route", ["direct", "through a proxy"])
def test_a_stream_with_an_untrusted_certificate_is_a_stream_error(tls_fake, monkeypatch, route):
    fake, ca_bundle = tls_fake
    socket_ssl_context = rakerone._stream_tls_context
    monkeypatch.setattr(rakerone, "_stream_tls_context",  # the socket alone trusts certifi only
                        lambda route: socket_ssl_context(dict(route, verify=True)))

    with LoopbackProxy() as proxy:
        if route == "through a proxy":
            monkeypatch.setenv("https_proxy", proxy.url)
        with rakerone.Client(fake.api_key, base_url=fake.base_url, verify=ca_bundle) as client:
            with pytest.raises(rakerone.StreamError, match="TLS failed"):
                next(client.iter_run_events(PROJECT, RUN))

    assert proxy.tunnels == (2 if route == "through a proxy" else 0)


def test_stream_options_are_checked_before_any_traffic(fake, rakerone_client):
    for options in ({"ping_interval": 0}, {"ping_timeout": -1}, {"idle_timeout": "5"},
                    {"max_outage": -1}, {"max_outage": float("nan")}, {"ping_interval": float("inf")}):
        with pytest.raises(rakerone.ConfigurationError):
            rakerone_client.iter_run_events(PROJECT, RUN, **options)

    assert fake.requests_seen == []


def test_a_ws_url_that_downgrades_https_is_refused():
    client = rakerone.Client(API_KEY, base_url=BASE_URL)
    ticket = rakerone.WsTicket(ticket="secret-ticket", ws_url="ws://app.raker.one/api/x/ws?ticket=secret-ticket")

    with pytest.raises(rakerone.StreamError, match="downgrades https") as raised:
        rakerone._stream_url(client._transport, "/projects/p/playbook-runs/r", ticket)

    assert "secret-ticket" not in str(raised.value)


@pytest.mark.parametrize("allow_insecure_http, refused", [(False, True), (True, False)])
def test_a_plain_ws_url_beyond_loopback_is_refused_unless_allowed(allow_insecure_http, refused):
    client = rakerone.Client(API_KEY, base_url="http://127.0.0.1:9/api", allow_insecure_http=allow_insecure_http)
    ticket = rakerone.WsTicket(ticket="secret-ticket", ws_url="ws://rakerone.invalid/api/x/ws?ticket=secret-ticket")

    if refused:
        with pytest.raises(rakerone.StreamError, match="in clear") as raised:
            rakerone._stream_url(client._transport, "/projects/p/playbook-runs/r", ticket)
        assert "secret-ticket" not in str(raised.value)
    else:
        assert rakerone._stream_url(client._transport, "/projects/p/playbook-runs/r", ticket).startswith("ws://rakerone.invalid/")


def test_socket_url_is_derived_from_the_base_url_without_ws_url():
    client = rakerone.Client(API_KEY, base_url=BASE_URL)
    ticket = rakerone.WsTicket(ticket="a b/c")

    url = rakerone._stream_url(client._transport, "/projects/p/playbook-runs/r", ticket)

    assert url == "wss://api.example.test/api/projects/p/playbook-runs/r/ws?ticket=a%20b%2Fc"


def test_module_level_stream_shortcut_uses_the_environment(fake, monkeypatch):
    monkeypatch.setenv("RAKERONE_API_KEY", fake.api_key)
    monkeypatch.setenv("RAKERONE_BASE_URL", fake.base_url)
    emit(fake, 1, 2)
    fake.finish_run_stream(PROJECT, RUN)

    assert [event.id for event in rakerone.iter_run_events(PROJECT, RUN)] == ["e1", "e2"]


# .. Streams that outlast real networks ...............................................
# Frames the fake cannot send come from RawPeer: a WebSocket server on 127.0.0.1 that
# plays one script per connection; wsproto does its handshake and reads the client.

OPCODE_CONT, OPCODE_TEXT, OPCODE_CLOSE, OPCODE_PING, OPCODE_PONG = 0x0, 0x1, 0x8, 0x9, 0xA


def frame(opcode: int, payload: bytes, fin: bool = True, masked: bool = False) -> bytes:
    """One frame as a server would send it, built by websocket-client's ABNF."""
    import websocket

    return websocket.ABNF(int(fin), 0, 0, 0, opcode, int(masked), payload).format()


def event_frame(n: int, **options) -> bytes:
    return frame(OPCODE_TEXT, json.dumps(run_event(n)).encode(), **options)


CLOSE_1000 = frame(OPCODE_CLOSE, (1000).to_bytes(2, "big"))


class PeerConnection:
    """One accepted TCP connection of a RawPeer, as its script sees it."""

    def __init__(self, sock: socket.socket) -> None:
        from wsproto import ConnectionType, WSConnection

        self.sock = sock
        self.protocol = WSConnection(ConnectionType.SERVER)
        #: What the client sent after the handshake: wsproto events (Ping, CloseConnection...).
        self.received: list = []
        self._reader = threading.Thread(target=self._read, daemon=True)

    def handshake(self) -> None:
        from wsproto.events import Request

        while not any(isinstance(event, Request) for event in self.protocol.events()):
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("the client left during the handshake")
            self.protocol.receive_data(data)

    def accept(self) -> None:
        from wsproto.events import AcceptConnection

        self.sock.sendall(self.protocol.send(AcceptConnection()))
        self._reader.start()

    def refuse(self, status: int, headers: list = ()) -> None:
        from wsproto.events import RejectConnection

        self.sock.sendall(self.protocol.send(RejectConnection(status_code=status, headers=list(headers))))

    def send(self, data: bytes, pause: float = 0.0) -> None:
        """Send bytes; with a pause, one byte at a time, so the client reads them piecemeal."""
        if not pause:
            self.sock.sendall(data)
            return
        for index in range(len(data)):
            self.sock.sendall(data[index:index + 1])
            time.sleep(pause)

    def close_code(self, timeout: float = 5.0):
        """The code of the client's close frame, once it arrives (None if it does not)."""
        if self._reader.is_alive():
            self._reader.join(timeout)
        codes = [event.code for event in self.received if type(event).__name__ == "CloseConnection"]
        return codes[0] if codes else None

    def wait_for(self, kind: str, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while not any(type(event).__name__ == kind for event in self.received):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True

    def _read(self) -> None:
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    return
                self.protocol.receive_data(data)
                self.received.extend(self.protocol.events())
        except OSError:
            return


class RawPeer(TcpPeer):
    """A WebSocket server on 127.0.0.1: connection N runs ``scripts[N]``, then (if the
    script returns) waits for the client to leave. Later connections are refused 503.
    ``served`` holds each connection as its script saw it."""

    def __init__(self, *scripts) -> None:
        super().__init__()
        self._scripts = list(scripts)
        self.url = f"ws://{self.address}/ws"
        self.served: list = []

    def client(self, **options) -> rakerone.Client:
        """A client whose tickets point at this peer (nothing is sent to its base URL)."""
        client = rakerone.Client("peer-key", base_url="http://127.0.0.1:9/api", timeout=5, **options)
        client.mint_run_ticket = lambda *ids: rakerone.WsTicket(ticket="peer-ticket", ws_url=self.url)
        return client

    def serve(self, sock: socket.socket) -> None:
        sock.settimeout(10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = PeerConnection(sock)
        with self.lock:
            self.served.append(conn)
            script = self._scripts.pop(0) if self._scripts else (lambda c: c.refuse(503))
        try:
            conn.handshake()
            script(conn)
        except OSError:  # the client left: what it sent before is still to be read
            pass
        if conn._reader.is_alive():
            conn._reader.join(10)


def peak_rss_growth_mib(action) -> float:
    """Run ``action``; return how far the process's peak RSS rose above its RSS before."""
    if not os.path.exists("/proc/self/clear_refs"):
        pytest.skip("needs Linux's /proc to read the peak RSS")

    def status_kib(field: str) -> int:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))

    gc.collect()
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # resets VmHWM to the current RSS
    before = status_kib("VmRSS")
    action()
    return (status_kib("VmHWM") - before) / 1024


def test_max_outage_0_raises_on_the_first_drop(fake, rakerone_client, sleeps):
    emit(fake, 1)
    events = rakerone_client.iter_run_events(PROJECT, RUN, max_outage=0, idle_timeout=5)
    next(events)
    fake.drop_streams()

    with pytest.raises(rakerone.StreamDisconnectedError, match="reconnecting is off: max_outage=0"):
        next(events)

    assert sleeps == [] and fake.connections == 1


@pytest.mark.slow
def test_quiet_connections_that_answer_pings_dropped_often_keep_the_outage_budget(fake, rakerone_client, monkeypatch):
    monkeypatch.setattr(rakerone, "CONNECTION_WORKS_AFTER", 0.2)  # a pong after 0.2 s open is life
    emit(fake, 1)
    stop = threading.Event()

    def drop_every_half_second():  # 2 s of drops in all: twice the outage budget
        for _ in range(4):
            if stop.wait(0.5):
                return
            fake.drop_streams()
        emit(fake, 2)
        fake.finish_run_stream(PROJECT, RUN)

    dropper = threading.Thread(target=drop_every_half_second)
    dropper.start()
    try:
        ids = [event.id for event in rakerone_client.iter_run_events(PROJECT, RUN, max_outage=1, ping_interval=0.1)]
    finally:
        stop.set()
        dropper.join()

    assert ids == ["e1", "e2"]
    assert fake.connections >= 5


def test_a_server_down_for_15_seconds_is_waited_out_and_resumed_exactly_once(fake, rakerone_client, clock, sleeps):
    emit(fake, 1)

    def restart_after_15_s(seconds):  # the HTTP retries sleep here too
        if sum(sleeps) >= 15 and not restarted:
            restarted.append(fake.start())

    restarted = []
    clock.then = restart_after_15_s
    ids = []
    for event in rakerone_client.iter_run_events(PROJECT, RUN):
        ids.append(event.id)
        if event.id == "e1":
            fake.stop()
            emit(fake, 2)  # into the history the server replays when it is back
            fake.finish_run_stream(PROJECT, RUN)

    assert ids == ["e1", "e2"]
    assert sum(sleeps) >= 15 and max(sleeps) <= rakerone.RECONNECT_BACKOFF_CAP
    assert fake.connections == 2


@pytest.mark.slow
def test_the_outage_budget_runs_on_real_time_and_the_error_says_how_long(fake):
    fake.stop()
    started = time.monotonic()

    with rakerone.Client(fake.api_key, base_url=fake.base_url, timeout=5, max_retries=0) as client:
        with pytest.raises(rakerone.StreamDisconnectedError,
                           match=r"failed attempt\(s\) in a row, 1\.\d s without a working connection "
                                 r"\(max_outage=1 s\): could not mint a ticket"):
            next(client.iter_run_events(PROJECT, RUN, max_outage=1))

    assert 1.0 <= time.monotonic() - started < 3.0


def test_retry_after_on_a_refused_upgrade_is_honoured(no_leaks, sleeps):
    def accept_and_finish(conn):
        conn.accept()
        conn.send(event_frame(1) + CLOSE_1000)

    with RawPeer(lambda conn: conn.refuse(503, [(b"Retry-After", b"2")]), accept_and_finish) as peer:
        with peer.client() as client:
            ids = [event.id for event in client.iter_run_events(PROJECT, RUN)]

    assert ids == ["e1"]
    assert len(sleeps) == 1 and sleeps[0] >= 2


def test_retry_after_on_a_refused_ticket_mint_is_honoured(fake, rakerone_client, sleeps):
    emit(fake, 1)
    fake.finish_run_stream(PROJECT, RUN)
    fake.fail_next_requests(3, 429, retry_after=2, paths="ws-ticket")  # max_retries=2: three 429s

    ids = [event.id for event in rakerone_client.iter_run_events(PROJECT, RUN)]

    assert ids == ["e1"]
    assert sleeps[:2] == [2, 2]  # the HTTP retries
    assert len(sleeps) == 3 and sleeps[2] >= 2  # then the stream's own wait


def test_close_4401_after_events_mints_one_fresh_ticket_and_carries_on(fake, rakerone_client, sleeps):
    emit(fake, 1)
    ids = []

    for event in rakerone_client.iter_run_events(PROJECT, RUN):
        ids.append(event.id)
        if event.id == "e1":
            fake.close_streams(4401, "ticket expired")
            emit(fake, 2)
        else:
            fake.finish_run_stream(PROJECT, RUN)

    assert ids == ["e1", "e2"]
    assert fake.tickets_minted == fake.connections == 2
    assert sleeps == []


def test_a_ticket_refused_twice_in_a_row_raises_authentication_error_naming_the_ticket(fake, rakerone_client):
    emit(fake, 1)
    events = rakerone_client.iter_run_events(PROJECT, RUN, idle_timeout=5)
    next(events)
    fake.reject_next_connections(1, status=401)  # the fresh ticket is refused at the upgrade
    fake.close_streams(4401)

    with pytest.raises(rakerone.AuthenticationError) as raised:
        next(events)

    message = str(raised.value)
    assert "refused the WebSocket ticket (HTTP 401 at the upgrade) even freshly minted" in message
    assert "API key was accepted" in message and rakerone.API_KEY_ENV not in message
    assert raised.value.status_code == 401
    assert fake.tickets_minted == 2 and fake.connections == 1


@pytest.mark.slow
def test_tickets_refused_again_after_a_quiet_connection_raise_instead_of_looping(fake, rakerone_client):
    emit(fake, 1)
    events = rakerone_client.iter_run_events(PROJECT, RUN, idle_timeout=5)
    next(events)

    def refuse_twice() -> None:
        fake.close_streams(4401)  # the first ticket expires; the stream gets a fresh one...
        fake.wait_for(lambda: fake.connections == 2)
        time.sleep(0.8)  # ...whose connection stays up, quiet (e1 is replayed, not new)...
        fake.close_streams(4401)  # ...and is refused too

    refuser = threading.Thread(target=refuse_twice)
    refuser.start()
    with pytest.raises(rakerone.AuthenticationError, match="twice in a row"):
        next(events)
    refuser.join()

    assert fake.tickets_minted == 2


def test_a_refused_ticket_mint_raises_authentication_error_naming_the_key(fake, rakerone_client):
    emit(fake, 1)
    events = rakerone_client.iter_run_events(PROJECT, RUN, idle_timeout=5)
    next(events)
    fake.api_key = "rotated-key"
    fake.close_streams(4401)

    with pytest.raises(rakerone.AuthenticationError, match=rakerone.API_KEY_ENV):
        next(events)

    assert fake.tickets_minted == 1


@pytest.mark.parametrize("header", [
    bytes([0x81, 0x7F]) + (4 * 1024**3).to_bytes(8, "big"),  # one frame of 4 GiB
    bytes([0x82, 0x7F]) + (100 * 1024**2).to_bytes(8, "big"),  # one binary frame of 100 MiB
], ids=["4GiB-frame", "100MiB-frame"])
def test_a_frame_over_max_message_bytes_is_refused_with_1009_before_its_payload(no_leaks, header):
    def announce_and_stream(conn):
        conn.accept()
        conn.send(header)
        chunk = b"x" * 65536
        for _ in range(1600):  # 100 MiB, unless the client leaves first
            conn.send(chunk)

    with RawPeer(announce_and_stream) as peer, peer.client() as client:
        events = client.iter_run_events(PROJECT, RUN, max_outage=0)
        started = time.monotonic()

        def read():
            with pytest.raises(rakerone.MessageTooLargeError, match="over max_message_bytes=16,777,216"):
                next(events)

        growth = peak_rss_growth_mib(read)
        elapsed = time.monotonic() - started
        assert peer.served[0].close_code() == 1009

    assert elapsed < 2.0
    assert growth < 16


def test_a_fragmented_100_mib_message_is_refused_once_its_fragments_pass_the_limit(no_leaks):
    def send_fragments(conn):
        conn.accept()
        fragment = b" " * (1024 * 1024)
        conn.send(frame(OPCODE_TEXT, fragment, fin=False))
        for _ in range(99):
            conn.send(frame(OPCODE_CONT, fragment, fin=False))

    with RawPeer(send_fragments) as peer, peer.client() as client:
        events = client.iter_run_events(PROJECT, RUN, max_outage=0)

        def read():
            with pytest.raises(rakerone.MessageTooLargeError, match="17,825,792 bytes so far"):
                next(events)

        growth = peak_rss_growth_mib(read)
        assert peer.served[0].close_code() == 1009

    assert growth < 64  # 16 MiB accepted, then refused; unbounded, 100 MiB and more


def test_max_message_bytes_is_the_callers_choice(no_leaks):
    big = json.dumps({"id": "big", "data": "x" * 2000}).encode()

    def send_two(conn):
        conn.accept()
        conn.send(frame(OPCODE_TEXT, json.dumps({"id": "small"}).encode()))
        conn.send(frame(OPCODE_TEXT, big))

    with RawPeer(send_two) as peer, peer.client() as client:
        events = client.iter_run_events(PROJECT, RUN, max_outage=0, max_message_bytes=1000)
        assert next(events).id == "small"
        with pytest.raises(rakerone.MessageTooLargeError, match=f"of {len(big):,} bytes, over max_message_bytes=1,000"):
            next(events)


@pytest.mark.slow
def test_long_ids_are_deduplicated_in_bounded_memory(no_leaks):
    long_id = "i" * 1_000_000

    def send_long_ids(conn):
        conn.accept()
        for n in range(100):
            conn.send(frame(OPCODE_TEXT, json.dumps({"id": f"{long_id}{n}"}).encode()))
        conn.send(frame(OPCODE_TEXT, json.dumps({"id": f"{long_id}7", "data": "replayed"}).encode()))
        conn.send(CLOSE_1000)

    with RawPeer(send_long_ids) as peer, peer.client() as client:
        count = 0

        def read_all():
            nonlocal count
            for event in client.iter_run_events(PROJECT, RUN, max_outage=0):
                assert event.data != "replayed"
                count += 1

        growth = peak_rss_growth_mib(read_all)

    assert count == 100
    assert growth < 64  # whole ids kept: 100 MB


def test_fragments_pings_mid_message_and_frames_split_across_reads_decode_exactly(no_leaks):
    large = {"id": "e5", "data": "y" * 70_000}  # a 64-bit length

    def send_awkward_frames(conn):
        conn.accept()
        conn.send(event_frame(1), pause=0.001)  # one byte per read
        conn.send(frame(OPCODE_TEXT, b'{"id": "e2", ', fin=False))
        conn.send(frame(OPCODE_PING, b"mid"))
        conn.send(frame(OPCODE_CONT, b'"data": "fragm', fin=False))
        conn.send(frame(OPCODE_PONG, b""))
        conn.send(frame(OPCODE_CONT, 'ented ✓"}'.encode()))
        conn.send(event_frame(3, masked=True))  # servers must not mask; websocket-client accepts it
        conn.send(frame(OPCODE_TEXT, json.dumps({"id": "e4", "data": "z" * 200}).encode()))  # 16-bit length
        big = frame(OPCODE_TEXT, json.dumps(large).encode())
        for start in range(0, len(big), 20_000):
            conn.send(big[start:start + 20_000])
            time.sleep(0.01)
        conn.send(CLOSE_1000)

    with RawPeer(send_awkward_frames) as peer, peer.client() as client:
        events = list(client.iter_run_events(PROJECT, RUN, max_outage=0))
        pongs = [event.payload for event in peer.served[0].received if type(event).__name__ == "Pong"]

    assert [event.id for event in events] == ["e1", "e2", "e3", "e4", "e5"]
    assert events[0].raw == run_event(1) and events[2].raw == run_event(3)
    assert events[1].data == "fragmented ✓"
    assert events[3].data == "z" * 200 and events[4].raw == large
    assert pongs == [b"mid"]


def test_a_frame_cut_by_a_wake_up_is_resumed_whole(no_leaks):
    whole = event_frame(1)
    pinged_mid_frame = []

    def send_in_two_halves(conn):
        conn.accept()
        conn.send(whole[:20])
        pinged_mid_frame.append(conn.wait_for("Ping"))  # the client woke up with half a frame
        conn.send(whole[20:] + CLOSE_1000)

    with RawPeer(send_in_two_halves) as peer, peer.client() as client:
        events = list(client.iter_run_events(PROJECT, RUN, max_outage=0, ping_interval=0.1, ping_timeout=10))

    assert pinged_mid_frame == [True]
    assert [event.raw for event in events] == [run_event(1)]


@pytest.mark.slow
def test_a_frame_trickled_slower_than_the_ping_deadline_is_a_dead_connection(no_leaks):
    def trickle(conn):
        conn.accept()
        conn.send(bytes([0x81, 126]) + (1000).to_bytes(2, "big"))
        for _ in range(100):  # 5 s for 100 of the 1,000 bytes, unless the client leaves
            conn.send(b" ")
            time.sleep(0.05)

    with RawPeer(trickle) as peer, peer.client() as client:
        events = client.iter_run_events(PROJECT, RUN, max_outage=0, ping_interval=0.3, ping_timeout=0.3)
        started = time.monotonic()
        with pytest.raises(rakerone.StreamDisconnectedError,
                           match=r"no answer to a ping within 0.3 s \(a frame was still arriving\)"):
            next(events)
        elapsed = time.monotonic() - started

    assert 0.5 <= elapsed < 2.0


def test_json_nested_too_deeply_is_a_stream_error(no_leaks, monkeypatch):
    monkeypatch.setattr(rakerone, "CLOSE_TIMEOUT", 0.1)  # the peer does not answer our goodbye
    def send_deep(conn):
        conn.accept()
        conn.send(frame(OPCODE_TEXT, b"[" * 100_000 + b"]" * 100_000))

    with RawPeer(send_deep) as peer, peer.client() as client:
        with pytest.raises(rakerone.StreamError, match=r"nested too deeply to decode: '\[\[\["):
            next(client.iter_run_events(PROJECT, RUN, max_outage=0))


@pytest.mark.slow
def test_an_outage_of_over_a_thousand_attempts_keeps_its_backoff_capped(fake, clock, sleeps):
    emit(fake, 1)
    fake.finish_run_stream(PROJECT, RUN)
    fake.stop()

    def restart_after_1100_attempts(seconds):
        if len(sleeps) == 1100:
            fake.start()

    with rakerone.Client(fake.api_key, base_url=fake.base_url, timeout=5, max_retries=0) as client:
        clock.then = restart_after_1100_attempts
        ids = [event.id for event in client.iter_run_events(PROJECT, RUN, max_outage=86400)]

    assert ids == ["e1"]
    assert len(sleeps) == 1100 and max(sleeps) <= rakerone.RECONNECT_BACKOFF_CAP


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_stream_carried_into_a_forked_child_raises_there_and_leaves_the_parents_alone(fake, rakerone_client):
    emit(fake, 1)
    events = rakerone_client.iter_run_events(PROJECT, RUN)
    assert next(events).id == "e1"

    pid = os.fork()
    if pid == 0:  # the child: reading must fail at once, without touching the socket
        try:
            next(events)
        except rakerone.StreamError as exc:
            os._exit(0 if "fork" in str(exc) else 2)
        except BaseException:
            os._exit(3)
        os._exit(1)
    _, status = os.waitpid(pid, 0)
    emit(fake, 2)

    assert os.WEXITSTATUS(status) == 0
    assert next(events).id == "e2"  # the parent's stream is untouched
    assert fake.client_close_codes == []
    events.close()


def sized_message(n: int, payload_bytes: int) -> dict:
    """A message whose JSON is exactly ``payload_bytes`` long."""
    padding = payload_bytes - len(json.dumps({"id": f"e{n}", "data": ""}))
    return {"id": f"e{n}", "data": "x" * padding}


@pytest.mark.slow
def test_frames_cut_anywhere_by_a_tiny_read_buffer_decode_exactly(no_leaks, monkeypatch):
    monkeypatch.setattr(rakerone, "READ_AHEAD_BYTES", 61)
    # After a payload too long for the buffer, the next read starts at its beginning, so
    # each cycle lands the same cuts at its 61st byte: a second frame one byte short (28 B,
    # then 34 B), a first one a byte short (62 B), a 4-byte header cut after 2 (59 B before
    # it), and a masked 14-byte header cut after 6 (55 B before it).
    cycle = [(26, False), (32, False), (60, False), (57, False), (200, False), (53, False), (70_000, True)]
    messages, wire = [], b""
    for n, (payload_bytes, masked) in enumerate(cycle * 4):
        messages.append(sized_message(n, payload_bytes))
        wire += frame(OPCODE_TEXT, json.dumps(messages[-1]).encode(), masked=masked)
    for n in range(len(messages), len(messages) + 40):  # then assorted sizes, a ping now and then
        messages.append(sized_message(n, random.Random(n).choice([30, 59, 61, 62, 63, 126, 127, 300, 66_000])))
        wire += frame(OPCODE_TEXT, json.dumps(messages[-1]).encode()) + (frame(OPCODE_PING, b"p") if n % 7 == 0 else b"")
    chunks = random.Random(7)

    def send(conn):
        conn.accept()
        half = wire.index(frame(OPCODE_TEXT, json.dumps(messages[len(cycle) * 4]).encode()))
        conn.send(wire[:half])  # at once: every read fills the buffer
        start = half
        while start < len(wire):  # then in odd pieces, with pauses
            end = start + chunks.randint(1, 97)
            conn.send(wire[start:end] + (CLOSE_1000 if end >= len(wire) else b""))
            start = end
            if chunks.random() < 0.05:
                time.sleep(0.002)

    with RawPeer(send) as peer, peer.client() as client:
        events = list(client.iter_run_events(PROJECT, RUN, max_outage=0))

    assert [event.raw for event in events] == messages


def test_a_control_frame_over_125_bytes_is_refused_before_its_payload(no_leaks):
    def announce_a_huge_ping(conn):
        conn.accept()
        conn.send(bytes([0x89, 0x7F]) + (1024**3).to_bytes(8, "big") + b"p" * 1000)

    with RawPeer(announce_a_huge_ping) as peer, peer.client() as client:
        with pytest.raises(rakerone.StreamDisconnectedError, match="a control frame of 1,073,741,824 bytes"):
            next(client.iter_run_events(PROJECT, RUN, max_outage=0))


@pytest.mark.parametrize("options", [
    {"max_outage": -1}, {"max_outage": float("nan")}, {"max_outage": float("inf")}, {"max_outage": True},
    {"max_outage": "60"}, {"max_message_bytes": 0}, {"max_message_bytes": 1.5}, {"max_message_bytes": None},
])
def test_unusable_outage_budgets_and_size_limits_are_refused_before_any_traffic(fake, rakerone_client, options):
    with pytest.raises(rakerone.ConfigurationError, match=next(iter(options))):
        rakerone_client.iter_run_events(PROJECT, RUN, **options)

    assert fake.requests_seen == []


# -- Where users run it: fork, threads, sessions, proxies ------------------------------
# Real servers on 127.0.0.1: the fake, a small scripted HTTP/1.1 peer for answers the
# fake cannot give (drips, broken framing, compression, echoed headers), and a small
# HTTP proxy (CONNECT tunnels and forward requests, or 407 for every one).

#: Distinctive (any trace of it in a text is a leak), and changed by percent-encoding.
ODD_KEY = "sk-live+Zq8w/9e7r6t5y4u3i=="


class ScriptedHandler(http.server.BaseHTTPRequestHandler):
    """http.server's parsing of one connection's requests, each answered by the peer's ``answer``."""

    protocol_version = "HTTP/1.1"

    def handle_one_request(self):
        if self.server.stopping.is_set():
            self.close_connection = True
        else:
            super().handle_one_request()

    def do_GET(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with self.server.lock:
            self.server.requests.append((self.command, self.path, dict(self.headers)))
        try:
            self.server.answer(self)
        except OSError:  # the client went away: that is its right
            self.close_connection = True

    do_POST = do_GET

    def log_message(self, *args):
        pass


class ScriptedPeer(TcpPeer):
    """An HTTP/1.1 server on 127.0.0.1 answering each request with ``answer(handler)``, the
    handler being http.server's (``handler.server`` is this peer). It keeps every request's
    method, path and headers."""

    def __init__(self, answer) -> None:
        super().__init__(answer)
        self.requests: list = []

    @property
    def server_address(self) -> tuple:
        return self._listener.getsockname()

    def serve(self, conn: socket.socket) -> None:
        ScriptedHandler(conn, conn.getpeername(), self)


def answer_json(handler, body, status=200, headers=()) -> None:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    for name, value in headers:
        handler.send_header(name, value)
    handler.end_headers()
    handler.wfile.write(data)


def answer_run(handler) -> None:
    """Each run id answered with a run of that id (so a mixed-up answer shows)."""
    answer_json(handler, {"run": {"id": handler.path.rsplit("/", 1)[1], "status": "running"}})


def peer_stopping(handler) -> bool:
    """For answers that write for long: has the ScriptedPeer been asked to stop?"""
    return handler.server.stopping.is_set()


class LoopbackProxy(TcpPeer):
    """An HTTP proxy on 127.0.0.1 for loopback targets only: CONNECT tunnels, and plain
    requests in absolute form forwarded as they are; both spliced both ways.

    ``refuse_from`` (a count of requests already served) makes it answer 407 from then on.
    """

    def __init__(self, refuse_from=None) -> None:
        super().__init__()
        self.refuse_from = refuse_from
        self.tunnels = self.forwards = self.refusals = 0
        self.credentials: list = []  # each request's Proxy-Authorization, or None

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    @property
    def hits(self) -> int:
        return self.tunnels + self.forwards + self.refusals

    def serve(self, conn: socket.socket) -> None:
        head = b""
        while b"\r\n\r\n" not in head and len(head) < 65536:
            data = conn.recv(65536)
            if not data:
                return
            head += data
        method, target = head.split(b" ", 2)[:2]
        authorization = re.search(rb"(?im)^proxy-authorization: *([^\r\n]*)", head.split(b"\r\n\r\n", 1)[0])
        with self.lock:
            self.credentials.append(authorization and authorization.group(1).decode())
            refuse = self.refuse_from is not None and self.hits >= self.refuse_from
            if refuse:
                self.refusals += 1
            elif method == b"CONNECT":
                self.tunnels += 1
            else:
                self.forwards += 1
        if refuse:
            conn.sendall(b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"t\"\r\n"
                         b"Content-Length: 0\r\nConnection: close\r\n\r\n")
            return
        if method == b"CONNECT":
            host, port = target.decode().rsplit(":", 1)
            rest = head.split(b"\r\n\r\n", 1)[1]
        else:
            parts = urllib.parse.urlsplit(target.decode())
            host, port, rest = parts.hostname, parts.port or 80, head
        if host not in ("127.0.0.1", "localhost"):
            return  # tests only ever talk to loopback
        with self.track(socket.create_connection(("127.0.0.1", int(port)), timeout=5)) as upstream:
            if method == b"CONNECT":
                conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            if rest:
                upstream.sendall(rest)
            self._splice(conn, upstream)

    def _splice(self, one: socket.socket, other: socket.socket) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(one, selectors.EVENT_READ, other)
            selector.register(other, selectors.EVENT_READ, one)
            while not self.stopping.is_set():
                for key, _ in selector.select(0.05):
                    try:
                        data = key.fileobj.recv(65536)
                        if not data:
                            return
                        key.data.sendall(data)
                    except OSError:
                        return


def run_children(count: int, work, timeout: float = 30.0) -> list:
    """Fork ``count`` children, start them together, and return what each ``work(index)``
    returned (JSON), or ``"died"``; a child still running at ``timeout`` is killed."""
    go_read, go_write = os.pipe()
    children = []
    try:
        for index in range(count):
            result_read, result_write = os.pipe()
            pid = os.fork()
            if pid == 0:  # the child: never return into pytest
                status = 1
                try:
                    os.close(go_write)
                    os.read(go_read, 1)
                    os.write(result_write, json.dumps(work(index)).encode())
                    status = 0
                finally:
                    os._exit(status)
            os.close(result_write)
            children.append((pid, result_read))
        os.write(go_write, b"go" * count)
        deadline = time.monotonic() + timeout
        return [read_child(pid, fd, deadline) for pid, fd in children]
    finally:
        os.close(go_read)
        os.close(go_write)
        for pid, fd in children:
            os.close(fd)
            if os.waitpid(pid, os.WNOHANG) == (0, 0):
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)  # every child is reaped, none outlives the test


def read_child(pid: int, fd: int, deadline: float):
    data = b""
    while True:
        ready, _, _ = select.select([fd], [], [], max(deadline - time.monotonic(), 0))
        if not ready:
            return "timed out"
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        data += chunk
    return json.loads(data) if data else "died"


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded")
def test_forked_children_never_get_each_others_answers(no_leaks):
    def calls_in_threads(child):  # 50 calls: 5 threads of 10, from the first one after the fork
        results = {}

        def calls(thread):
            for call in range(10):
                run_id = f"child{child}_{thread * 10 + call}"
                try:
                    results[run_id] = client.get_run(PROJECT, run_id).id
                except rakerone.RakerOneError as exc:
                    results[run_id] = type(exc).__name__
        threads = [threading.Thread(target=calls, args=(thread,)) for thread in range(5)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return results

    with ScriptedPeer(answer_run) as peer, \
            rakerone.Client(ODD_KEY, base_url=peer.base_url, timeout=10, max_retries=0) as client:
        assert client.get_run(PROJECT, "parent_0").id == "parent_0"  # a pooled connection to inherit

        started = time.monotonic()
        results = run_children(4, calls_in_threads)
        elapsed = time.monotonic() - started
        connections = peer.connections

        assert client.get_run(PROJECT, "parent_1").id == "parent_1"
        assert peer.connections == connections  # on the parent's own connection: the children left it be
    wrong = {run_id: got for result in results if isinstance(result, dict)
             for run_id, got in result.items() if got != run_id}
    assert [len(result) if isinstance(result, dict) else result for result in results] == [50] * 4
    assert wrong == {}
    print(f"fork: 4 children x 50 get_run in {elapsed:.2f} s")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded")
def test_a_forked_child_can_close_the_client_whatever_the_parent_was_doing(no_leaks):
    with ScriptedPeer(answer_run) as peer, rakerone.Client(ODD_KEY, base_url=peer.base_url) as client:
        client.get_run(PROJECT, RUN)  # the watchdog thread runs
        held, release = threading.Event(), threading.Event()

        def busy_watchdog():  # as if the watchdog thread was at work at the fork
            with rakerone._watchdog._condition:
                held.set()
                release.wait()
        holder = threading.Thread(target=busy_watchdog)
        holder.start()
        held.wait()
        try:
            results = run_children(1, lambda index: client.close() or "closed", timeout=5)
        finally:
            release.set()
            holder.join()

    assert results == ["closed"]



#: A server for volume: one process (so it has a core of its own), one selector loop,
#: the same answer to every request on every connection; on stdin's end it prints how
#: many requests it served, and exits.
def test_sixteen_threads_share_one_client_without_errors_or_pool_warnings(no_leaks, caplog):
    errors = []

    def calls():
        for _ in range(50):
            try:
                assert client.get_run(PROJECT, RUN).id == RUN
            except Exception as exc:  # noqa: BLE001 - counted, whatever it is
                errors.append(repr(exc))

    caplog.set_level(logging.WARNING, logger="urllib3")
    with ScriptedPeer(answer_run) as peer, rakerone.Client(ODD_KEY, base_url=peer.base_url, timeout=10) as client:
        threads = [threading.Thread(target=calls) for _ in range(16)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.monotonic() - started

    assert errors == []
    assert len(peer.requests) == 800
    assert "Connection pool is full" not in caplog.text
    print(f"threads: 16 x 50 get_run in {elapsed:.2f} s")


class CountingAdapter(requests.adapters.HTTPAdapter):
    """A user's own adapter: counts what it sends."""

    def __init__(self) -> None:
        super().__init__()
        self.sends = 0

    def send(self, request, **kwargs):
        self.sends += 1
        return super().send(request, **kwargs)


def answer_run_with_a_cookie(handler) -> None:
    answer_json(handler, {"run": {"id": RUN, "status": "running"}}, headers=[("Set-Cookie", "visit=v1; Path=/")])


def test_a_session_passed_in_runs_its_hooks_and_keeps_its_cookies(no_leaks):
    seen = []
    with requests.Session() as session, ScriptedPeer(answer_run_with_a_cookie) as peer:
        session.hooks["response"].append(lambda response, **_: seen.append(response.status_code))
        with rakerone.Client(ODD_KEY, base_url=peer.base_url, session=session) as client:
            client.get_run(PROJECT, RUN)
            client.get_run(PROJECT, RUN)

    assert seen == [200, 200]
    assert session.cookies.get("visit") == "v1"
    assert [headers.get("Cookie") for _, _, headers in peer.requests] == [None, "visit=v1"]


def test_the_clients_own_session_keeps_the_cookies_the_api_sets(no_leaks):
    with ScriptedPeer(answer_run_with_a_cookie) as peer:
        with rakerone.Client(ODD_KEY, base_url=peer.base_url) as client:
            client.get_run(PROJECT, RUN)
            client.request("POST", "/projects/{}/things", PROJECT, json={"n": 1})

    assert [headers.get("Cookie") for _, _, headers in peer.requests] == [None, "visit=v1"]


def answer_setting_then_deleting_a_cookie(handler) -> None:
    cookie = "visit=v1; Path=/" if len(handler.server.requests) == 1 else "visit=; Path=/; Max-Age=0"
    answer_json(handler, {"run": {"id": RUN, "status": "running"}}, headers=[("Set-Cookie", cookie)])


@pytest.mark.parametrize("own_session", [True, False], ids=["own session", "session passed in"])
def test_a_cookie_the_api_deletes_is_not_sent_again(no_leaks, own_session):
    with requests.Session() as session, ScriptedPeer(answer_setting_then_deleting_a_cookie) as peer:
        with rakerone.Client(ODD_KEY, base_url=peer.base_url, session=None if own_session else session) as client:
            client.get_run(PROJECT, RUN)
            client.request("POST", "/projects/{}/things", PROJECT, json={"n": 1})
            client.request("POST", "/projects/{}/things", PROJECT, json={"n": 2})

    assert [headers.get("Cookie") for _, _, headers in peer.requests] == [None, "visit=v1", None]


def test_an_adapter_mounted_after_the_client_was_made_carries_its_requests(no_leaks):
    adapter = CountingAdapter()
    with requests.Session() as session, ScriptedPeer(answer_run) as peer:
        with rakerone.Client(ODD_KEY, base_url=peer.base_url, session=session) as client:
            session.mount(peer.base_url, adapter)
            client.get_run(PROJECT, RUN)

    assert adapter.sends == 1 and len(peer.requests) == 1


def test_a_session_hook_that_raises_for_status_still_gives_our_error_class_once(no_leaks):
    with requests.Session() as session, ScriptedPeer(lambda handler: answer_json(
            handler, {"error": "not_found", "message": "no such run"}, status=404)) as peer:
        session.hooks["response"].append(lambda response, **_: response.raise_for_status())
        with rakerone.Client(ODD_KEY, base_url=peer.base_url, session=session) as client:
            with pytest.raises(rakerone.NotFoundError, match="no such run"):
                client.get_run(PROJECT, RUN)

    assert len(peer.requests) == 1


def test_the_session_ca_bundle_is_trusted_by_http_and_stream_without_client_verify(tls_fake):
    fake, ca_bundle = tls_fake
    with requests.Session() as session:
        session.verify = ca_bundle
        with rakerone.Client(fake.api_key, base_url=fake.base_url, session=session) as client:
            assert client.get_run(PROJECT, RUN).status == "running"
            assert [event.id for event in client.iter_run_events(PROJECT, RUN)] == ["e1"]


def test_an_explicit_client_verify_wins_over_the_session_verify(tls_fake, sleeps):
    fake, ca_bundle = tls_fake
    with requests.Session() as session:
        session.verify = False  # would trust anything
        with rakerone.Client(fake.api_key, base_url=fake.base_url, session=session, verify=True) as client:
            with pytest.raises(rakerone.APIConnectionError, match="TLS failed"):
                client.get_run(PROJECT, RUN)
            with pytest.raises(rakerone.RakerOneError, match="TLS failed"):
                next(client.iter_run_events(PROJECT, RUN))
        session.verify = "/nonexistent/ca.pem"  # would fail to load
        with rakerone.Client(fake.api_key, base_url=fake.base_url, session=session, verify=ca_bundle) as client:
            assert client.get_run(PROJECT, RUN).status == "running"
            assert [event.id for event in client.iter_run_events(PROJECT, RUN)] == ["e1"]


def test_a_session_that_does_not_trust_the_environment_keeps_its_proxies_off(tls_fake, monkeypatch):
    fake, ca_bundle = tls_fake
    for name in ("https_proxy", "http_proxy", "all_proxy"):
        monkeypatch.setenv(name, "http://proxy.invalid:3128")  # never resolves: nothing leaves
    with requests.Session() as session:
        session.verify, session.trust_env = ca_bundle, False
        with rakerone.Client(fake.api_key, base_url=fake.base_url, session=session) as client:
            assert client.get_run(PROJECT, RUN).status == "running"
            assert [event.id for event in client.iter_run_events(PROJECT, RUN)] == ["e1"]


def test_http_and_stream_tunnel_through_an_https_proxy_from_the_environment(tls_fake, monkeypatch):
    fake, ca_bundle = tls_fake
    with LoopbackProxy() as proxy:
        monkeypatch.setenv("https_proxy", proxy.url)
        with rakerone.Client(fake.api_key, base_url=fake.base_url, verify=ca_bundle) as client:
            assert [event.id for event in client.iter_run_events(PROJECT, RUN)] == ["e1"]
            tunnels_for_the_stream = proxy.tunnels
            assert client.get_run(PROJECT, RUN).status == "running"

    assert tunnels_for_the_stream == 2  # the ticket's, then the socket's
    assert proxy.tunnels >= 2


def test_plain_http_goes_through_a_loopback_proxy_and_the_stream_tunnels(fake, monkeypatch):
    emit(fake, 1)
    fake.finish_run_stream(PROJECT, RUN)
    with LoopbackProxy() as proxy:
        monkeypatch.setenv("http_proxy", proxy.url)
        with rakerone.Client(fake.api_key, base_url=fake.base_url) as client:
            assert client.get_run(PROJECT, RUN).status == "running"
            assert [event.id for event in client.iter_run_events(PROJECT, RUN)] == ["e1"]

    assert proxy.forwards >= 1  # plain http is forwarded, not tunnelled...
    assert proxy.tunnels == 1  # ...so the one tunnel is the socket's


def test_the_stream_takes_the_session_proxy_even_where_the_environment_exempts_the_host(tls_fake, monkeypatch):
    fake, ca_bundle = tls_fake
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")  # not for a session that ignores the environment
    with LoopbackProxy() as proxy, requests.Session() as session:
        session.trust_env, session.proxies = False, {"https": proxy.url}
        with rakerone.Client(fake.api_key, base_url=fake.base_url, verify=ca_bundle, session=session) as client:
            assert [event.id for event in client.iter_run_events(PROJECT, RUN)] == ["e1"]

    assert proxy.tunnels == 2  # the ticket's, then the socket's


def test_proxy_credentials_in_the_proxy_url_reach_the_proxy_for_http_and_the_stream(tls_fake, monkeypatch):
    fake, ca_bundle = tls_fake
    with LoopbackProxy() as proxy:
        monkeypatch.setenv("https_proxy", proxy.url.replace("://", "://proxy%20user:p%40ss%3Aword@"))
        with rakerone.Client(fake.api_key, base_url=fake.base_url, verify=ca_bundle) as client:
            assert [event.id for event in client.iter_run_events(PROJECT, RUN)] == ["e1"]

    expected = "Basic " + base64.b64encode(b"proxy user:p@ss:word").decode()
    assert proxy.tunnels == 2 and proxy.credentials == [expected, expected]  # the ticket's, the socket's


@pytest.mark.parametrize("setting", ["session cert", "session key", "REQUESTS_CA_BUNDLE"])
def test_a_tls_file_that_does_not_exist_is_a_configuration_error_when_the_client_is_built(tls_fake, monkeypatch,
                                                                                      tmp_path, setting):
    fake, ca_bundle = tls_fake
    missing = str(tmp_path / "missing.pem")
    with requests.Session() as session:
        if setting == "session cert":
            session.cert = missing
        elif setting == "session key":
            session.cert = (ca_bundle, missing)
        else:
            monkeypatch.setenv("REQUESTS_CA_BUNDLE", missing)
        with pytest.raises(rakerone.ConfigurationError, match="missing.pem' does not exist"):
            rakerone.Client(fake.api_key, base_url=fake.base_url, session=session)

    assert fake.requests_seen == []


@pytest.mark.parametrize("refused", ["http", "stream"])
@pytest.mark.parametrize("scheme", ["https", "http"])
def test_a_proxy_answering_407_is_proxy_authentication_error_asked_once(tls_fake, fake, monkeypatch, sleeps,
                                                                       scheme, refused):
    server, ca_bundle = tls_fake if scheme == "https" else (fake, None)
    with LoopbackProxy(refuse_from=0 if refused == "http" else 1) as proxy:
        monkeypatch.setenv(f"{scheme}_proxy", proxy.url)
        with rakerone.Client(server.api_key, base_url=server.base_url, verify=ca_bundle) as client:
            with pytest.raises(rakerone.ProxyAuthenticationError, match="proxy refused") as raised:
                if refused == "http":
                    client.get_run(PROJECT, RUN)
                else:
                    next(client.iter_run_events(PROJECT, RUN))

    assert proxy.refusals == 1 and sleeps == []
    assert "credentials" in str(raised.value)


@pytest.mark.parametrize("variable, value", [
    ("http_proxy", "http://proxy.invalid:3128"),  # .invalid never resolves: nothing can leave
    ("HTTP_PROXY", "proxy.invalid:3128"),
    ("all_proxy", "http://user:pass@proxy.invalid:3128"),
])
def test_plain_http_through_a_remote_proxy_is_refused_before_any_traffic(fake, monkeypatch, variable, value):
    monkeypatch.setenv(variable, value)

    with pytest.raises(rakerone.ConfigurationError, match="proxy.invalid") as raised:
        rakerone.Client(fake.api_key, base_url=fake.base_url)

    assert "allow_insecure_http=True" in str(raised.value) and fake.api_key not in str(raised.value)
    assert fake.requests_seen == []


def test_a_remote_proxy_set_on_the_session_later_is_refused_before_any_traffic(fake):
    with requests.Session() as session, \
            rakerone.Client(fake.api_key, base_url=fake.base_url, session=session) as client:
        session.proxies["http"] = "http://proxy.invalid:3128"
        with pytest.raises(rakerone.ConfigurationError, match="proxy.invalid"):
            client.get_run(PROJECT, RUN)
        with pytest.raises(rakerone.ConfigurationError, match="proxy.invalid"):
            next(client.iter_run_events(PROJECT, RUN))

    assert fake.requests_seen == []


def test_allow_insecure_http_lets_a_remote_proxy_carry_plain_http(fake, monkeypatch, sleeps):
    monkeypatch.setenv("http_proxy", "http://proxy.invalid:3128")

    with rakerone.Client(fake.api_key, base_url=fake.base_url, allow_insecure_http=True, max_retries=0) as client:
        route = client._transport.route(fake.base_url)
        with pytest.raises(rakerone.APIConnectionError, match="proxy.invalid|resolve|Name or service"):
            client.get_run(PROJECT, RUN)  # the proxy's name never resolves

    assert requests.utils.select_proxy(fake.base_url, route["proxies"]) == "http://proxy.invalid:3128"
    assert fake.requests_seen == []


def secret_fragments(secret: str) -> list:
    """Every 8-character piece of a secret, raw and percent-encoded: any one in a text is a leak."""
    forms = {secret, urllib.parse.quote(secret, safe=""), urllib.parse.quote(secret), urllib.parse.quote_plus(secret)}
    return sorted({form[i:i + 8].lower() for form in forms for i in range(len(form) - 7)})


def leaked(texts, *secrets) -> list:
    text = "\n".join(texts).lower()
    return [fragment for secret in secrets for fragment in secret_fragments(secret) if fragment in text]


def error_texts(error: BaseException) -> list:
    """What a user or a crash report sees of an error: its message, and the whole
    traceback with every chained cause and context."""
    return [str(error), "".join(traceback.format_exception(type(error), error, error.__traceback__))]


#: Ways a server echoes what it was sent, each at the start of its page (so inside the
#: quoted excerpt); "straddling" puts the key across the excerpt's 200-character cut.
ECHOES = {
    "headers": lambda handler, key: "<pre>" + str(handler.headers) + "</pre>",
    "straddling": lambda handler, key: "x" * 195 + key,
    "percent-encoded": lambda handler, key: "key=" + urllib.parse.quote(key, safe="").lower(),
    "other query name": lambda handler, key: f"/login?access_token={key}&next=/",
    "json-escaped": lambda handler, key: "<p>" + json.dumps({"seen": f'"{key}"'}),
}


def echo_page(echo: str, status: int):
    def answer(handler):
        key = handler.headers["Authorization"].split(" ", 1)[1]
        page = ECHOES[echo](handler, key).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "text/html")
        handler.send_header("Content-Length", str(len(page)))
        handler.end_headers()
        handler.wfile.write(page)
    return answer


@pytest.mark.parametrize("status", [200, 500, 404])
@pytest.mark.parametrize("echo", sorted(ECHOES))
def test_a_server_echoing_the_key_never_gets_it_into_errors_or_logs(clock, no_leaks, caplog, echo, status):
    caplog.set_level(logging.DEBUG)
    with ScriptedPeer(echo_page(echo, status)) as peer, \
            rakerone.Client(ODD_KEY, base_url=peer.base_url, max_retries=1) as client:
        with pytest.raises(rakerone.APIError) as raised:
            client.get_run(PROJECT, RUN)

    assert "***" in str(raised.value)  # the echo was quoted, redacted
    assert leaked(error_texts(raised.value) + [caplog.text], ODD_KEY) == []


def ticket_peer(tickets: list):
    """Mints tickets and a wsUrl carrying the ticket in its path and under another query
    name; answers everything else, the upgrade too, with a 503 page quoting every ticket
    (raw and percent-encoded) and the request."""
    def answer(handler):
        if handler.command == "POST":
            ticket = f"tk/{len(tickets)}+{uuid.uuid4().hex}="
            tickets.append(ticket)
            quoted = urllib.parse.quote(ticket, safe="")
            port = handler.server.server_address[1]
            answer_json(handler, {"ticket": ticket, "wsUrl": f"ws://127.0.0.1:{port}/api/ws/{quoted}?token={quoted}"})
            return
        seen = " ".join(f"{ticket} {urllib.parse.quote(ticket, safe='').lower()}" for ticket in tickets)
        page = f"tickets seen: {seen}; no socket here: {handler.requestline}\n{handler.headers}".encode()
        handler.send_response(503)
        handler.send_header("Content-Type", "text/plain")
        handler.send_header("Content-Length", str(len(page)))
        handler.end_headers()
        handler.wfile.write(page)
    return answer


def test_a_ticket_in_the_ws_url_path_or_another_query_name_never_gets_into_errors_or_logs(clock, no_leaks, caplog,
                                                                                        monkeypatch):
    monkeypatch.setattr(rakerone.random, "uniform", lambda low, high: high)  # two tickets exactly
    caplog.set_level(logging.DEBUG)
    tickets = []
    with ScriptedPeer(ticket_peer(tickets)) as peer, \
            rakerone.Client(ODD_KEY, base_url=peer.base_url, max_retries=0) as client:
        with pytest.raises(rakerone.StreamDisconnectedError) as raised:
            next(client.iter_run_events(PROJECT, RUN, max_outage=0.25))
        with pytest.raises(rakerone.APIError) as quoted_later:
            client.get_run(PROJECT, RUN)  # a page quoting every ticket minted

    assert len(tickets) == 2 and "connecting to" in caplog.text
    texts = error_texts(raised.value) + error_texts(quoted_later.value) + [caplog.text]
    assert leaked(texts, ODD_KEY, *tickets) == []


@pytest.mark.slow
def test_the_cli_never_prints_the_key_a_server_echoed(no_leaks):
    with ScriptedPeer(echo_page("headers", 200)) as peer:
        env = dict(os.environ, RAKERONE_API_KEY=ODD_KEY, RAKERONE_BASE_URL=peer.base_url, PYTHONUNBUFFERED="1")
        result = subprocess.run(rakerone_command() + ["-v", "run", "get", PROJECT, RUN], env=env,
                                capture_output=True, text=True, timeout=20)

    assert result.returncode == 5 and "not JSON" in result.stderr
    assert leaked([result.stdout, result.stderr], ODD_KEY) == []


@pytest.fixture
def keyed_fake(no_leaks):
    """The fake, serving a distinctive key (so any trace of it shows)."""
    with rakerone_fake.FakeRakerOne(api_key=ODD_KEY) as server:
        server.add_run(PROJECT, {"id": RUN, "status": "running"})
        emit(server, 1)
        yield server


@pytest.mark.slow
@pytest.mark.parametrize("code, reason", [
    pytest.param(4401, "Bearer {key} ?ticket={ticket}", id="4401 quoting as header and query"),
    pytest.param(4401, "{key} {ticket}", id="4401 quoting them bare"),
    pytest.param(1011, "Bearer {key} ?ticket={ticket}", id="1011 reconnect"),
    pytest.param(4000, "Bearer {key} ?ticket={ticket}", id="4000 unknown"),
])
def test_a_close_reason_echoing_the_key_and_ticket_never_gets_into_errors_or_logs(clock, keyed_fake, caplog,
                                                                                  code, reason):
    caplog.set_level(logging.DEBUG)
    with rakerone.Client(ODD_KEY, base_url=keyed_fake.base_url) as client:
        tickets = record_tickets(client)
        events = client.iter_run_events(PROJECT, RUN, max_outage=0, idle_timeout=0.5)  # 4401: one fresh ticket
        next(events)
        keyed_fake.close_streams(code, reason.format(key=ODD_KEY, ticket=tickets[0]))
        with pytest.raises(rakerone.RakerOneError) as raised:
            next(events)

    assert leaked(error_texts(raised.value) + [caplog.text], ODD_KEY, *tickets) == []


def test_a_frame_echoing_the_key_and_ticket_never_gets_into_errors_or_logs(keyed_fake, caplog):
    caplog.set_level(logging.DEBUG)
    with rakerone.Client(ODD_KEY, base_url=keyed_fake.base_url) as client:
        tickets = record_tickets(client)
        events = client.iter_run_events(PROJECT, RUN)
        next(events)
        keyed_fake.send_raw_frame(f"{ODD_KEY} {tickets[0]} <not json>")
        with pytest.raises(rakerone.StreamError) as raised:
            next(events)

    assert leaked(error_texts(raised.value) + [caplog.text], ODD_KEY, *tickets) == []


def test_repr_of_a_half_built_client_does_not_raise():
    class Failing(rakerone.Client):
        def __init__(self):
            try:
                super().__init__(ODD_KEY, base_url="ftp://example.invalid")
            except rakerone.ConfigurationError:
                self.seen_midway = repr(self)
                raise

    with pytest.raises(rakerone.ConfigurationError):
        Failing()

    assert repr(object.__new__(rakerone.Client)) == "<rakerone.Client base_url=None>"


def test_the_client_asks_for_no_compression_even_through_a_session_that_would(no_leaks):
    with requests.Session() as session, ScriptedPeer(answer_run) as peer:
        with rakerone.Client(ODD_KEY, base_url=peer.base_url) as client:
            client.get_run(PROJECT, RUN)
        with rakerone.Client(ODD_KEY, base_url=peer.base_url, session=session) as client:
            client.get_run(PROJECT, RUN)

    assert "gzip" in session.headers["Accept-Encoding"]
    assert [headers["Accept-Encoding"] for _, _, headers in peer.requests] == ["identity", "identity"]


#: Runs get_run in a fresh process (RAKERONE_* from the environment, options as JSON in
#: argv[1]) and prints its outcome, duration and peak RSS growth: the high-water mark
#: (VmHWM, reset through clear_refs just before the call) less the RSS before it.
MEASURE_GET_RUN = r'''
import json, sys, time
import rakerone

def status_kib(field):
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))

with rakerone.Client(max_retries=0, **json.loads(sys.argv[1])) as client:
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # the high-water mark starts again from here
    before = status_kib("VmRSS")
    started = time.monotonic()
    try:
        client.get_run("p", "r")
        outcome = "returned"
    except rakerone.RakerOneError as exc:
        outcome = f"{type(exc).__name__}: {exc}"
    seconds = time.monotonic() - started
    growth = status_kib("VmHWM") - before
print(json.dumps({"outcome": outcome[:300], "seconds": round(seconds, 3), "rss_growth_mib": round(growth / 1024, 1)}))
'''


def measure_get_run(base_url: str, **options) -> dict:
    if not os.path.exists("/proc/self/clear_refs"):
        pytest.skip("measures memory through Linux's /proc")
    env = dict(os.environ, RAKERONE_API_KEY=ODD_KEY, RAKERONE_BASE_URL=base_url)
    result = subprocess.run([sys.executable, "-c", MEASURE_GET_RUN, json.dumps(options)], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    measured = json.loads(result.stdout)
    print(f"{base_url} {options}: {measured}")
    return measured


GIB_OF_ZEROS_GZIPPED = gzip.compress(bytes(1 << 20)) * 1024  # 1 MB of gzip members, 1 GiB inflated


def answer_body(body: bytes, status=200, headers=(), framing="length", repeat=1):
    """Send ``body`` ``repeat`` times, framed by Content-Length, chunked, or the close."""
    def answer(handler):
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        for name, value in headers:
            handler.send_header(name, value)
        if framing == "length":
            handler.send_header("Content-Length", str(len(body) * repeat))
        elif framing == "chunked":
            handler.send_header("Transfer-Encoding", "chunked")
        else:
            handler.send_header("Connection", "close")
            handler.close_connection = True
        handler.end_headers()
        for _ in range(repeat):
            if peer_stopping(handler):
                return
            handler.wfile.write(b"%x\r\n%s\r\n" % (len(body), body) if framing == "chunked" else body)
        if framing == "chunked":
            handler.wfile.write(b"0\r\n\r\n")
    return answer


@pytest.mark.slow
@pytest.mark.parametrize("encoding, body", [
    ("gzip", GIB_OF_ZEROS_GZIPPED),
    ("deflate", zlib.compress(json.dumps({"run": {"id": RUN}}).encode())),
    ("br", b"\x8b\x00\x80" + b"{}" + b"\x03"),
    ("gzip, identity", gzip.compress(b"{}")),
], ids=["gzip bomb of 1 GiB", "deflate", "br", "gzip, identity"])  # the bodies would make ids of megabytes
def test_a_compressed_answer_is_refused_unread_without_decompressing_it(no_leaks, encoding, body):
    with ScriptedPeer(answer_body(body, headers=[("Content-Encoding", encoding)])) as peer:
        measured = measure_get_run(peer.base_url)

    assert measured["outcome"].startswith("UnexpectedResponseError") and "compressed" in measured["outcome"]
    assert measured["rss_growth_mib"] < 32 and measured["seconds"] < 5  # 1 GiB, had it been inflated


def answer_compressed_503_then_run(handler):
    if len(handler.server.requests) == 1:
        answer_body(gzip.compress(b"<html>Service Unavailable</html>"), status=503,
                    headers=[("Content-Encoding", "gzip")])(handler)
    else:
        answer_run(handler)


def test_a_compressed_error_page_is_judged_by_its_status_unread(no_leaks, sleeps):
    with ScriptedPeer(answer_compressed_503_then_run) as peer, \
            rakerone.Client(ODD_KEY, base_url=peer.base_url, max_retries=1) as client:
        assert client.get_run(PROJECT, RUN).id == RUN  # the 503 was retried like any other

    assert len(peer.requests) == 2 and len(sleeps) == 1


def test_a_compressed_404_is_not_found(no_leaks):
    answer = answer_body(gzip.compress(b"{}"), status=404, headers=[("Content-Encoding", "gzip")])
    with ScriptedPeer(answer) as peer, rakerone.Client(ODD_KEY, base_url=peer.base_url) as client:
        with pytest.raises(rakerone.NotFoundError, match="HTTP 404"):
            client.get_run(PROJECT, RUN)

    assert len(peer.requests) == 1


@pytest.mark.parametrize("framing", ["length", "chunked", "close"])
def test_a_body_over_max_response_bytes_is_refused_and_not_retried(no_leaks, sleeps, framing):
    body = json.dumps({"run": {"id": RUN, "padding": "x" * 2000}}).encode()
    with ScriptedPeer(answer_body(body, framing=framing)) as peer:
        with rakerone.Client(ODD_KEY, base_url=peer.base_url, max_response_bytes=len(body)) as client:
            assert client.get_run(PROJECT, RUN).id == RUN  # exactly the limit is fine
        with rakerone.Client(ODD_KEY, base_url=peer.base_url, max_response_bytes=len(body) - 1) as client:
            with pytest.raises(rakerone.ResponseTooLargeError, match="max_response_bytes") as raised:
                client.get_run(PROJECT, RUN)

    assert ("announced" in str(raised.value)) == (framing == "length")
    assert len(peer.requests) == 2 and sleeps == []


@pytest.mark.slow
@pytest.mark.parametrize("framing, status, refused_as, rss_bound_mib", [
    ("length", 200, "ResponseTooLargeError", 16),  # refused on the announcement, unread
    ("chunked", 200, "ResponseTooLargeError", 48),  # read up to the 16 MiB cap, then refused
    ("length", 500, "ServerError", 8),  # an error page is read only as far as its message needs
])
def test_a_256_mib_answer_costs_no_more_than_the_cap(no_leaks, framing, status, refused_as, rss_bound_mib):
    with ScriptedPeer(answer_body(bytes(1 << 20), status=status, framing=framing, repeat=256)) as peer:
        measured = measure_get_run(peer.base_url)

    assert measured["outcome"].startswith(refused_as)
    assert measured["rss_growth_mib"] < rss_bound_mib and measured["seconds"] < 10


RUN_BODY = json.dumps({"run": {"id": RUN, "status": "running", "padding": "x" * 100}}).encode()


def drip(handler, data: bytes, every: float = 0.2) -> None:
    """Write ``data`` one byte at a time, until done, the client leaves or the peer stops."""
    for byte in data:
        if peer_stopping(handler):
            return
        handler.wfile.write(bytes([byte]))
        handler.wfile.flush()
        time.sleep(every)


def answer_dripping(part: str):
    answered = []

    def answer(handler):
        if part == "headers, on a reused connection" and not answered:
            answered.append(handler.path)
            answer_json(handler, RUN_BODY)  # kept alive, for the next request
            return
        handler.close_connection = True
        head = [b"HTTP/1.1 200 OK", b"Content-Type: application/json"]
        if part == "body, chunked":
            head.append(b"Transfer-Encoding: chunked")
            body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(RUN_BODY), RUN_BODY)
        elif part == "body, until the close":
            head.append(b"Connection: close")
            body = RUN_BODY
        else:
            head.append(b"Content-Length: %d" % len(RUN_BODY))
            body = RUN_BODY
        head = b"\r\n".join(head) + b"\r\n\r\n"
        if part.startswith("headers"):
            drip(handler, head + body)
        else:
            handler.wfile.write(head)
            drip(handler, body)
    return answer


DRIPS = ["headers", "body, with a length", "body, chunked", "body, until the close", "headers, on a reused connection"]


@pytest.mark.slow
@pytest.mark.parametrize("part", DRIPS)
def test_a_dripping_answer_times_out_within_the_timeout(no_leaks, part):
    with ScriptedPeer(answer_dripping(part)) as peer, \
            rakerone.Client(ODD_KEY, base_url=peer.base_url, timeout=0.5, max_retries=0) as client:
        if part == "headers, on a reused connection":
            client.get_run(PROJECT, RUN)
        started = time.monotonic()
        with pytest.raises(rakerone.APITimeoutError, match="timed out after 0.5 s"):
            client.get_run(PROJECT, RUN)
        elapsed = time.monotonic() - started

    assert elapsed < 4  # 0.5 s, with generous slack for a busy machine


@pytest.mark.slow
def test_a_dripping_answer_with_retries_takes_at_most_each_attempt_plus_backoff(no_leaks, clock):
    with ScriptedPeer(answer_dripping("body, with a length")) as peer, \
            rakerone.Client(ODD_KEY, base_url=peer.base_url, timeout=0.5, max_retries=2) as client:
        started = clock.now()
        with pytest.raises(rakerone.APITimeoutError, match="after 3 attempts"):
            client.get_run(PROJECT, RUN)
        elapsed = clock.now() - started  # the backoffs skipped, counted

    assert len(peer.requests) == 3 and len(clock.sleeps) == 2
    assert sum(clock.sleeps) <= 0.5 + 1.0  # the largest backoffs
    assert elapsed < 3 * 0.5 + (0.5 + 1.0) + 1  # attempts, backoffs, slack


@pytest.mark.slow
def test_a_client_used_again_after_close_still_keeps_its_deadline(no_leaks):
    with ScriptedPeer(answer_dripping("body, with a length")) as peer:
        client = rakerone.Client(ODD_KEY, base_url=peer.base_url, timeout=0.5, max_retries=0)
        client.close()
        started = time.monotonic()
        with pytest.raises(rakerone.APITimeoutError):
            client.get_run(PROJECT, RUN)
        elapsed = time.monotonic() - started
        client.close()

    assert elapsed < 5


def answer_dripping_for(seconds: float, every: float):
    """Headers at once, then the body one byte every ``every`` s for about ``seconds``,
    then the server gives up (the body is never complete)."""
    def answer(handler):
        handler.close_connection = True
        handler.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                            b"Content-Length: %d\r\n\r\n" % len(RUN_BODY))
        handler.wfile.flush()
        drip(handler, RUN_BODY[:int(seconds / every)], every=every)
    return answer


@pytest.mark.slow
def test_close_from_another_thread_during_a_call_cuts_the_call_within_its_deadline(no_leaks):
    outcome: dict = {}

    def call():
        started = time.monotonic()
        try:
            client.get_run(PROJECT, RUN)
        except rakerone.RakerOneError as exc:
            outcome["raised"] = repr(exc)  # not the error: its traceback would keep the socket
        outcome["elapsed"] = time.monotonic() - started

    with ScriptedPeer(answer_dripping_for(seconds=12, every=0.1)) as peer:
        client = rakerone.Client(ODD_KEY, base_url=peer.base_url, timeout=2, max_retries=0)
        caller = threading.Thread(target=call)
        caller.start()
        time.sleep(0.3)
        client.close()  # from another thread than the call's
        caller.join(timeout=3.0)
        peer.stopping.set()  # ends a call that outlived its deadline
        caller.join()

    assert outcome["elapsed"] < 2.0
    assert outcome["raised"].startswith("APIConnectionError(") and "closed during the call" in outcome["raised"]


@pytest.mark.slow
def test_a_watchdog_that_cannot_start_fails_only_that_call(no_leaks, monkeypatch):
    original_start = threading.Thread.start

    def refused_for_the_watchdog(thread, *args, **kwargs):  # as under a process limit
        if thread.name == "rakerone-watchdog":
            raise RuntimeError("can't start new thread")
        return original_start(thread, *args, **kwargs)

    monkeypatch.setattr(rakerone, "_watchdog", rakerone._Watchdog())  # none running yet
    with ScriptedPeer(answer_dripping("body, with a length")) as peer:
        client = rakerone.Client(ODD_KEY, base_url=peer.base_url, timeout=0.5, max_retries=0)
        with monkeypatch.context() as patch:
            patch.setattr(threading.Thread, "start", refused_for_the_watchdog)
            with pytest.raises(rakerone.APIConnectionError, match="could not start the thread") as refused:
                client.get_run(PROJECT, RUN)
        started = time.monotonic()
        with pytest.raises(rakerone.APITimeoutError):
            client.get_run(PROJECT, RUN)
        elapsed = time.monotonic() - started
        client.close()

    assert "was not sent" in str(refused.value)
    assert len(peer.requests) == 1  # the second call's only
    assert elapsed < 1.5


def answer_things(handler) -> None:
    answer_json(handler, {"ok": True}, status=201 if handler.command == "POST" else 200)


@pytest.mark.slow
def test_an_attempt_is_unwatched_before_its_connection_returns_to_the_pool(no_leaks, monkeypatch):
    put_conn, paused = urllib3.connectionpool.HTTPConnectionPool._put_conn, []

    def pause_past_the_deadline_once(pool, conn):  # widens the window between release and reuse
        put_conn(pool, conn)
        if not paused:
            paused.append(conn)
            time.sleep(0.5)

    monkeypatch.setattr(urllib3.connectionpool.HTTPConnectionPool, "_put_conn", pause_past_the_deadline_once)
    with ScriptedPeer(answer_things) as peer, \
            rakerone.Client(ODD_KEY, base_url=peer.base_url, timeout=0.3, max_retries=0) as client:
        answers = [client.request("POST", "/things"), client.request("GET", "/things"),
                   client.request("POST", "/things")]

    assert paused
    assert answers == [{"ok": True}] * 3
    assert [method for method, _, _ in peer.requests] == ["POST", "GET", "POST"]


def test_wait_for_run_ends_at_once_on_an_untrusted_certificate(tls_fake, clock):
    fake, _ = tls_fake

    with rakerone.Client(fake.api_key, base_url=fake.base_url) as client:  # certifi: not trusted
        with pytest.raises(rakerone.APIConnectionError, match="TLS failed"):
            client.wait_for_run(PROJECT, RUN, timeout=20)

    assert clock.sleeps == []


def answer_run_and_close(handler) -> None:
    handler.close_connection = True
    answer_json(handler, {"run": {"id": RUN, "status": "running"}}, headers=[("Connection", "close")])


def watchdog_threads() -> list:
    return [thread for thread in threading.enumerate() if thread.name == "rakerone-watchdog"]


@pytest.mark.slow
def test_dropped_clients_leave_one_watchdog_thread_which_ends_when_idle(monkeypatch):
    monkeypatch.setattr(rakerone._Watchdog, "IDLE_EXIT", 0.2)  # gone within 0.4 s of idleness, not 4 s
    monkeypatch.setattr(rakerone, "_watchdog", rakerone._Watchdog())  # not one an earlier test started
    earlier = set(watchdog_threads())
    with ScriptedPeer(answer_run_and_close) as peer:
        watching = []
        for _ in range(100):  # each with the default 30 s timeout, dropped unclosed
            assert rakerone.Client(ODD_KEY, base_url=peer.base_url).get_run(PROJECT, RUN).id == RUN
            watching.append(len(set(watchdog_threads()) - earlier))
        gc.collect()
        give_up = time.monotonic() + 5.0
        while set(watchdog_threads()) - earlier and time.monotonic() < give_up:
            time.sleep(0.05)

    assert max(watching) == 1
    assert set(watchdog_threads()) - earlier == set()


def dripping(data: bytes, every: float = 0.2):
    """An answer for TcpPeer: read the request, then send ``data`` one byte at a time."""
    def answer(conn, stopping):
        conn.recv(65536)
        for byte in data:
            if stopping.wait(every):
                return
            conn.sendall(bytes([byte]))
        stopping.wait()
    return answer


TLS_RECORD_START = b"\x16\x03\x03\x40\x00" + b"\x02" * 200  # a 16 KiB handshake record, never finished
PROXY_TUNNEL_ANSWER = b"HTTP/1.1 200 Connection established\r\nX-Padding: " + b"x" * 200 + b"\r\n\r\n"


@pytest.mark.slow
@pytest.mark.parametrize("part", ["TLS handshake", "proxy CONNECT answer"])
def test_a_dripping_tls_handshake_or_proxy_tunnel_times_out_within_the_timeout(no_leaks, monkeypatch,
                                                                               refused_port, part):
    with TcpPeer(dripping(TLS_RECORD_START if part == "TLS handshake" else PROXY_TUNNEL_ANSWER)) as peer:
        if part == "TLS handshake":
            base_url = f"https://{peer.address}/api"
        else:
            base_url = f"https://127.0.0.1:{refused_port}/api"  # never reached: the tunnel never opens
            monkeypatch.setenv("https_proxy", f"http://{peer.address}")
        with rakerone.Client(ODD_KEY, base_url=base_url, timeout=0.5, max_retries=0) as client:
            started = time.monotonic()
            with pytest.raises(rakerone.APITimeoutError):
                client.get_run(PROJECT, RUN)
            elapsed = time.monotonic() - started

    assert peer.connections == 1 and elapsed < 4


@pytest.mark.slow
@pytest.mark.parametrize("part", [
    "body, with a length",
    pytest.param("body, until the close", marks=pytest.mark.skipif(
        not hasattr(urllib3.HTTPResponse, "shutdown"), reason="needs urllib3 2.3+ (HTTPResponse.shutdown)")),
])
def test_a_dripping_body_times_out_through_a_session_of_your_own(no_leaks, part):
    with requests.Session() as session, ScriptedPeer(answer_dripping(part)) as peer, \
            rakerone.Client(ODD_KEY, base_url=peer.base_url, timeout=0.5, max_retries=0, session=session) as client:
        started = time.monotonic()
        with pytest.raises(rakerone.APITimeoutError):
            client.get_run(PROJECT, RUN)
        elapsed = time.monotonic() - started

    assert elapsed < 4


def test_a_stream_proxy_that_cannot_be_reached_is_a_lost_connection(no_leaks, monkeypatch, refused_port):
    with ScriptedPeer(ticket_for("localhost:9")) as api:  # the socket's host: through the proxy only
        monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{refused_port}")
        monkeypatch.setenv("no_proxy", "127.0.0.1")  # the API is reached directly
        with rakerone.Client(ODD_KEY, base_url=api.base_url, timeout=1, max_retries=0) as client:
            with pytest.raises(rakerone.StreamDisconnectedError,
                               match=r"could not connect \(Failed to establish a new connection: .*refused"):
                next(client.iter_run_events(PROJECT, RUN, max_outage=0))


def ticket_for(ws_address: str):
    """An API that mints tickets for a WebSocket at ``ws_address`` (and answers nothing else)."""
    def answer(handler):
        answer_json(handler, {"ticket": "t1", "wsUrl": f"ws://{ws_address}/api/ws?ticket=t1"})
    return answer


UPGRADE_ANSWER = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  b"X-Padding: " + b"x" * 200 + b"\r\n\r\n")


@pytest.mark.slow
@pytest.mark.parametrize("part", ["upgrade answer", "proxy CONNECT answer"])
def test_a_dripping_stream_opening_gives_up_within_the_timeout(no_leaks, monkeypatch, part):
    answer = UPGRADE_ANSWER if part == "upgrade answer" else b"HTTP/1.1 200 Connection established\r\n\r\n"
    with TcpPeer(dripping(answer, every=0.15)) as dripper:  # 6 s of answer: longer than the bound
        ws_address = dripper.address
        if part == "proxy CONNECT answer":
            monkeypatch.setenv("http_proxy", f"http://{dripper.address}")
            monkeypatch.setenv("no_proxy", "127.0.0.1")  # the API is reached directly...
            ws_address = ws_address.replace("127.0.0.1", "localhost")  # ...the socket through the proxy
        with ScriptedPeer(ticket_for(ws_address)) as api, \
                rakerone.Client(ODD_KEY, base_url=api.base_url, timeout=0.5, max_retries=0) as client:
            started = time.monotonic()
            with pytest.raises(rakerone.StreamDisconnectedError, match="longer than"):
                next(client.iter_run_events(PROJECT, RUN, max_outage=0))
            elapsed = time.monotonic() - started

    assert dripper.connections == 1 and elapsed < 4


def answer_broken(kind: str):
    def answer(handler):
        handler.close_connection = True
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        if kind == "nested too deeply":
            body = b"[" * 100_000 + b"]" * 100_000
            handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            handler.wfile.write(body)
        elif kind == "shorter than its length":
            handler.send_header("Content-Length", str(len(RUN_BODY) + 100))
            handler.end_headers()
            handler.wfile.write(RUN_BODY)
        else:
            handler.send_header("Transfer-Encoding", "chunked")
            handler.end_headers()
            if kind == "a broken chunk size":
                handler.wfile.write(b"zz\r\n" + RUN_BODY + b"\r\n0\r\n\r\n")
            else:  # a chunk cut short
                handler.wfile.write(b"%x\r\n%s" % (len(RUN_BODY), RUN_BODY[:10]))
    return answer


@pytest.mark.parametrize("kind, error_class", [
    ("shorter than its length", rakerone.APIConnectionError),
    ("a broken chunk size", rakerone.APIConnectionError),
    ("a chunk cut short", rakerone.APIConnectionError),
    ("nested too deeply", rakerone.UnexpectedResponseError),
])
def test_a_truncated_or_broken_body_is_a_named_error_and_retried(no_leaks, sleeps, kind, error_class):
    with ScriptedPeer(answer_broken(kind)) as peer, \
            rakerone.Client(ODD_KEY, base_url=peer.base_url, max_retries=2) as client:
        with pytest.raises(error_class) as raised:
            client.get_run(PROJECT, RUN)

    assert type(raised.value) is error_class
    assert len(peer.requests) == 3 and len(sleeps) == 2


def answer_then_drop_the_next_request(handler) -> None:
    """Answers, keeps the connection, then closes it on the next request unanswered: a
    server timing out an idle connection just as the client reuses it."""
    if len(handler.server.requests) == 2:
        handler.close_connection = True  # nothing written: the client reads an empty answer
    else:
        answer_run(handler)


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_a_pooled_connection_the_server_closed_is_resent_at_once_when_safe(no_leaks, sleeps, method):
    with ScriptedPeer(answer_then_drop_the_next_request) as peer, \
            rakerone.Client(ODD_KEY, base_url=peer.base_url, max_retries=0) as client:
        client.request(method, "/projects/{}/playbook-runs/{}", PROJECT, RUN)
        if method == "GET":
            client.request(method, "/projects/{}/playbook-runs/{}", PROJECT, "second")
        else:
            with pytest.raises(rakerone.APIConnectionError, match="closed connection without response"):
                client.request(method, "/projects/{}/playbook-runs/{}", PROJECT, "second")

    assert [path.rsplit("/", 1)[1] for _, path, _ in peer.requests] == (
        [RUN, "second", "second"] if method == "GET" else [RUN, "second"])
    assert peer.connections == (2 if method == "GET" else 1) and sleeps == []


def get_run_using(fake, **options):
    """Ask the fake for a run with a client built from ``options`` (the fake's key and URL
    unless given): traffic the fake sees, unless the input is refused first."""
    options = {"api_key": fake.api_key, "base_url": fake.base_url, "max_retries": 0, **options}
    with rakerone.Client(**options) as client:
        return client.get_run(PROJECT, RUN)


def stream_using(fake, **options):
    with rakerone.Client(fake.api_key, base_url=fake.base_url) as client:
        return next(client.iter_run_events(PROJECT, RUN, **options))


# Each row would send something (or fail with a raw exception: UnicodeEncodeError,
# InvalidHeader, OverflowError, TypeError) were the input not refused first.
ODD_INPUTS = [
    # (what, a call with the odd input, a word the message must hold)
    ("key with a zero-width space", lambda f: get_run_using(f, api_key="sk-live-Zq8w\u200b9e7r6t5y4u3i"), "U+200B"),
    ("key with a non-Latin-1 character", lambda f: get_run_using(f, api_key="sk-live-Zq8w\u043a9e7r6t5y4u3i"),
     "U+043A"),
    ("key with an accented letter", lambda f: get_run_using(f, api_key="sk-live-Zq8w\u00e99e7r6t5y4u3i"), "U+00E9"),
    ("key with a space", lambda f: get_run_using(f, api_key="sk-live-Zq8w 9e7r6t5y4u3i"), "U+0020"),
    ("key with a trailing line break", lambda f: get_run_using(f, api_key="sk-live-Zq8w9e7r6t5y4u3i\n"), "U+000A"),
    ("user agent with a leading space", lambda f: get_run_using(f, user_agent=" my-app/1.2"), "user_agent"),
    ("user agent with a line break", lambda f: get_run_using(f, user_agent="my-app/1.2\nX-Evil: 1"), "user_agent"),
    ("user agent with a non-ASCII character", lambda f: get_run_using(f, user_agent="my-app/\u043a"),
     "user_agent"),
    ("timeout of 1e12 s", lambda f: get_run_using(f, timeout=1e12), "timeout"),
    ("infinite timeout", lambda f: get_run_using(f, timeout=float("inf")), "timeout"),
    ("NaN timeout", lambda f: get_run_using(f, timeout=float("nan")), "timeout"),
    ("zero timeout", lambda f: get_run_using(f, timeout=0), "timeout"),
    ("negative timeout", lambda f: get_run_using(f, timeout=-1), "timeout"),
    ("read timeout of 1e12 s", lambda f: get_run_using(f, timeout=(1, 1e12)), "read timeout"),
    ("ping interval of 1e12 s", lambda f: stream_using(f, ping_interval=1e12), "ping_interval"),
    ("infinite idle timeout", lambda f: stream_using(f, idle_timeout=float("inf")), "idle_timeout"),
    ("plain http to foo.localhost",  # resolved through DNS: not loopback
     lambda f: get_run_using(f, base_url="http://foo.localhost/api", session=fake_as_proxy(f)), "foo.localhost"),
    ("zero max_response_bytes", lambda f: get_run_using(f, max_response_bytes=0), "max_response_bytes"),
    ("negative max_response_bytes", lambda f: get_run_using(f, max_response_bytes=-1), "max_response_bytes"),
    ("fractional max_response_bytes", lambda f: get_run_using(f, max_response_bytes=1.5), "max_response_bytes"),
    ("max_response_bytes as text", lambda f: get_run_using(f, max_response_bytes="16"), "max_response_bytes"),
    ("max_response_bytes as a bool", lambda f: get_run_using(f, max_response_bytes=True), "max_response_bytes"),
    ("max_response_bytes of None", lambda f: get_run_using(f, max_response_bytes=None), "max_response_bytes"),
]


@pytest.mark.parametrize("what, call, named", ODD_INPUTS, ids=[what for what, _, _ in ODD_INPUTS])
def test_odd_input_is_a_configuration_error_that_explains_without_echoing_the_key(fake, what, call, named):
    emit(fake, 1)

    with pytest.raises(rakerone.ConfigurationError) as raised:
        call(fake)

    assert named in str(raised.value)
    assert leaked([str(raised.value)], "sk-live-Zq8w9e7r6t5y4u3i", fake.api_key) == []
    assert fake.requests_seen == []


@pytest.mark.parametrize("build", [
    pytest.param(lambda: rakerone.Client(API_KEY, base_url="http://localhost./api"), id="base URL"),
    pytest.param(lambda: rakerone_fake.FakeRakerOne(host="localhost."), id="the fake's host"),
])
def test_localhost_with_a_trailing_dot_is_not_loopback(build):  # glibc sends "localhost." to DNS
    with pytest.raises(ValueError, match="localhost."):
        build()


def test_a_ws_url_or_proxy_on_localhost_with_a_trailing_dot_is_refused(fake, monkeypatch):
    ticket = rakerone.WsTicket(ticket="t", ws_url="ws://localhost.:9/ws")
    with rakerone.Client(API_KEY, base_url=fake.base_url) as client:
        with pytest.raises(rakerone.StreamError, match="plain-ws"):
            rakerone._stream_url(client._transport, "/p", ticket)
    monkeypatch.setenv("http_proxy", "http://localhost.:3128")
    with pytest.raises(rakerone.ConfigurationError, match="in clear"):
        rakerone.Client(API_KEY, base_url=fake.base_url)


# -- Command line ----------------------------------------------------------------------
# The `rakerone` command as a real subprocess against the fake.


def rakerone_command() -> list:
    script = os.path.join(os.path.dirname(sys.executable), "rakerone")
    return [script] if os.path.exists(script) else [sys.executable, "-m", "rakerone"]


@pytest.fixture
def cli_env(fake):
    env = {name: value for name, value in os.environ.items() if "proxy" not in name.lower()}
    env.update(RAKERONE_API_KEY=fake.api_key, RAKERONE_BASE_URL=fake.base_url, PYTHONUNBUFFERED="1")
    return env


def run_command(env, *args, timeout=20):
    """The installed ``rakerone`` command, in a process of its own."""
    return subprocess.run(rakerone_command() + list(args), env=env, capture_output=True,
                          text=True, timeout=timeout)


def run_cli(env, *args, stdin: str = "") -> subprocess.CompletedProcess:
    """The command run by this process, with the RAKERONE_ variables of ``env``: for what it
    decides and prints (with rakerone's clock and constants as the test set them). What
    needs a process (signals, closed pipes, a locale, a logging handler) uses run_command."""
    import io

    import rakerone_cli

    stdout, stderr = io.TextIOWrapper(io.BytesIO(), encoding="utf-8"), io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(stdout), \
            contextlib.redirect_stderr(stderr):
        for name in [name for name in os.environ if name.startswith("RAKERONE_")]:
            patch.delenv(name)
        for name, value in env.items():
            if name.startswith("RAKERONE_"):
                patch.setenv(name, value)
        patch.setattr(sys, "stdin", io.StringIO(stdin))
        code = rakerone_cli.main(list(args))
    stdout.flush()
    return subprocess.CompletedProcess(args, code, stdout.buffer.getvalue().decode("utf-8", "replace"),
                                       stderr.getvalue())


def assert_one_line_error(result, *fragments):
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert all(fragment in result.stderr for fragment in fragments)


def test_cli_run_get_prints_the_run_exactly_as_the_server_sent_it(fake, cli_env):
    result = run_cli(cli_env, "run", "get", PROJECT, RUN)

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == dict(SEED_RUN_RESPONSE["run"], status="running", finishedAt=None)


def test_cli_run_ticket_prints_the_ticket_as_json(fake, cli_env):
    result = run_cli(cli_env, "run", "ticket", PROJECT, RUN)

    assert result.returncode == 0, result.stderr
    assert set(json.loads(result.stdout)) == {"ticket", "expiresAt", "expiresInSeconds", "wsUrl"}
    assert fake.tickets_minted == 1


def test_cli_run_events_prints_json_lines_in_order_and_exits_0_on_close_1000(fake, cli_env):
    emit(fake, 1, 2, 3)
    fake.finish_run_stream(PROJECT, RUN)

    result = run_cli(cli_env, "run", "events", PROJECT, RUN)

    assert result.returncode == 0, result.stderr
    assert [json.loads(line) for line in result.stdout.splitlines()] == [run_event(1), run_event(2), run_event(3)]


def test_cli_brief_events_prints_the_shaping_log(fake, cli_env):
    fake.emit_brief_entry(PROJECT, BRIEF, {"type": "shaping.log", "id": "l1", "data": "Drafting"})
    fake.finish_brief_stream(PROJECT, BRIEF)

    result = run_cli(cli_env, "brief", "events", PROJECT, BRIEF)

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["data"] == "Drafting"


@pytest.mark.slow
@pytest.mark.parametrize("final_status, exit_code", [("completed", 0), ("failed", 1)])
def test_cli_run_wait_exits_by_how_the_run_finished(fake, cli_env, final_status, exit_code):
    waiter = subprocess.Popen(rakerone_command() + ["run", "wait", PROJECT, RUN, "--timeout", "20"],
                              env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert fake.wait_for(lambda: fake.live_connections == 1, timeout=10)
    fake.update_run(PROJECT, RUN, status=final_status, finishedAt="2024-06-10T09:45:00Z")
    emit(fake, 1)
    fake.finish_run_stream(PROJECT, RUN)

    stdout, stderr = waiter.communicate(timeout=20)

    assert waiter.returncode == exit_code, stderr
    assert json.loads(stdout)["status"] == final_status
    assert stderr == ""  # not a terminal: no progress line


@pytest.mark.slow
def test_cli_run_wait_shows_one_live_status_line_on_a_terminal(fake, cli_env):
    terminal, stderr_end = pty.openpty()
    waiter = subprocess.Popen(rakerone_command() + ["run", "wait", PROJECT, RUN, "--timeout", "20"],
                              env=cli_env, stdout=subprocess.PIPE, stderr=stderr_end, text=True)
    os.close(stderr_end)
    assert fake.wait_for(lambda: fake.live_connections == 1, timeout=10)
    fake.update_run(PROJECT, RUN, status="succeeded")
    fake.finish_run_stream(PROJECT, RUN)

    stdout, _ = waiter.communicate(timeout=20)
    screen = b""
    while True:
        try:
            chunk = os.read(terminal, 4096)
        except OSError:  # EIO: the child's end is closed and everything was read
            break
        if not chunk:
            break
        screen += chunk
    os.close(terminal)

    assert waiter.returncode == 0
    assert json.loads(stdout)["status"] == "succeeded"
    assert "\r\x1b[Krunning · steps 3/3 done · 00:00 elapsed" in screen.decode()
    assert screen.decode().endswith("\r\x1b[K")  # the status line is wiped at the end


def test_cli_run_wait_returns_at_once_for_a_finished_run(fake, cli_env):
    fake.update_run(PROJECT, RUN, status="completed", finishedAt="2024-06-10T09:45:00Z")

    result = run_cli(cli_env, "run", "wait", PROJECT, RUN)

    assert result.returncode == 0 and fake.connections == 0


@pytest.mark.slow
def test_cli_run_wait_exits_124_when_its_timeout_passes(fake, cli_env):
    started = time.monotonic()

    result = run_cli(cli_env, "run", "wait", PROJECT, RUN, "--timeout", "0.5")

    assert result.returncode == 124
    assert time.monotonic() - started < 5
    assert_one_line_error(result, "still running after 0.5 s")


def test_cli_run_wait_polls_when_the_stream_is_refused(fake, cli_env, clock):
    fake.reject_next_connections(1, status=403)
    clock.then = lambda seconds: fake.update_run(PROJECT, RUN, status="succeeded")  # while it waits to poll

    result = run_cli(cli_env, "run", "wait", PROJECT, RUN, "--timeout", "20")

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["status"] == "succeeded"
    assert len(clock.sleeps) == 1 and fake.connections == 0  # no stream opened: polled once more


def test_cli_wrong_api_key_exits_3_with_one_line(fake, cli_env):
    cli_env["RAKERONE_API_KEY"] = "wrong-key"

    result = run_cli(cli_env, "run", "get", PROJECT, RUN)

    assert result.returncode == 3
    assert_one_line_error(result, "HTTP 401", "RAKERONE_API_KEY")
    assert "wrong-key" not in result.stderr


def test_cli_missing_api_key_exits_3_naming_the_variable(fake, cli_env):
    del cli_env["RAKERONE_API_KEY"]

    result = run_cli(cli_env, "run", "get", PROJECT, RUN)

    assert result.returncode == 3
    assert_one_line_error(result, "RAKERONE_API_KEY")


def test_cli_unknown_run_exits_4_with_one_line(fake, cli_env):
    result = run_cli(cli_env, "run", "get", PROJECT, "no-such-run")

    assert result.returncode == 4
    assert_one_line_error(result, "HTTP 404", "no-such-run")


def test_cli_unreachable_api_exits_6(fake, cli_env, refused_port, sleeps):
    cli_env["RAKERONE_BASE_URL"] = f"http://127.0.0.1:{refused_port}/api"

    result = run_cli(cli_env, "--timeout", "2", "run", "get", PROJECT, RUN)

    assert result.returncode == 6
    assert_one_line_error(result, "could not reach")


def test_cli_bad_usage_exits_2(cli_env):
    result = run_cli(cli_env, "run", "launch", PROJECT, RUN)

    assert result.returncode == 2 and "invalid choice" in result.stderr


def test_cli_version(cli_env):
    result = run_command(cli_env, "--version")

    assert (result.returncode, result.stdout.strip()) == (0, f"rakerone {rakerone.__version__}")


def test_cli_verbose_logs_are_redacted(fake, cli_env):
    emit(fake, 1)
    fake.finish_run_stream(PROJECT, RUN)

    result = run_command(cli_env, "-v", "run", "events", PROJECT, RUN)

    assert result.returncode == 0
    assert "ticket=***" in result.stderr and fake.api_key not in result.stderr


@pytest.mark.slow
def test_cli_run_events_into_head_exits_quietly(fake, cli_env):
    for n in range(3000):  # more than a pipe buffer, so the writer meets the closed pipe
        fake.emit_run_event(PROJECT, RUN, run_event(n, padding="x" * 40))
    command = " ".join(shlex.quote(part) for part in rakerone_command()) + f" run events {PROJECT} {RUN} | head -1"

    result = subprocess.run(["bash", "-o", "pipefail", "-c", command], env=cli_env, capture_output=True,
                            text=True, timeout=20)

    assert result.returncode == 0
    assert result.stderr == ""
    assert json.loads(result.stdout)["id"] == "e0"


def test_cli_ctrl_c_during_run_events_closes_with_1000_and_exits_130(fake, cli_env):
    emit(fake, 1)
    follower = subprocess.Popen(rakerone_command() + ["run", "events", PROJECT, RUN], env=cli_env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert json.loads(follower.stdout.readline())["id"] == "e1"

    follower.send_signal(signal.SIGINT)
    _, stderr = follower.communicate(timeout=10)

    assert follower.returncode == 130 and "Traceback" not in stderr
    assert fake.wait_for(lambda: fake.client_close_codes == [1000])


def test_cli_api_gets_a_path_and_prints_the_json(fake, cli_env):
    fake.add_route("GET", "/projects/p1/briefs", json={"briefs": [{"id": "b1", "title": "Café"}]})

    result = run_cli(cli_env, "api", "/projects/p1/briefs?limit=5")

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"briefs": [{"id": "b1", "title": "Café"}]}
    assert fake.requests[-1].query == (("limit", "5"),)


def test_cli_api_posts_fields_as_a_json_body(fake, cli_env):
    fake.add_route("POST", "/projects/p1/playbook-runs", status=201, json={"run": {"id": "r9", "status": "queued"}})

    result = run_cli(cli_env, "api", "/projects/p1/playbook-runs", "-f", "playbookId=pb_1", "-f", "note=a=b")

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["run"]["id"] == "r9"
    assert fake.requests[-1].json == {"playbookId": "pb_1", "note": "a=b"}
    assert fake.requests[-1].headers["Authorization"] == "Bearer ***"


def test_cli_api_sends_input_from_stdin_and_does_not_double_the_api_prefix(fake, cli_env):
    fake.add_route("PATCH", "/projects/p1", json={"id": "p1", "name": "New"})

    result = run_cli(cli_env, "api", "-X", "PATCH", "/api/projects/p1", "--input", "-", stdin='{"name": "New"}')

    assert result.returncode == 0, result.stderr
    assert fake.requests[-1].method == "PATCH" and fake.requests[-1].path == "/api/projects/p1"
    assert fake.requests[-1].json == {"name": "New"}


@pytest.mark.parametrize("status, exit_code", [(404, 4), (401, 3), (403, 3), (409, 5), (500, 5)])
def test_cli_api_exit_codes_follow_the_rest_of_the_cli(fake, cli_env, sleeps, status, exit_code):
    fake.add_route("GET", "/projects/p1/thing", status=status, json={"error": "conflict_or_so", "issues": []})

    result = run_cli(cli_env, "--timeout", "5", "api", "/projects/p1/thing")

    assert result.returncode == exit_code
    assert result.stdout == "" and "Traceback" not in result.stderr
    assert "conflict_or_so" in result.stderr


def test_cli_api_an_unknown_path_is_not_found(fake, cli_env):
    result = run_cli(cli_env, "api", "/no/such/path")

    assert result.returncode == 4
    assert '"error": "not_found"' in result.stderr


@pytest.mark.parametrize("args", [["api", "/projects/../admin"], ["api", "/p", "-f", "novalue"],
                                  ["api", "/p", "--input", "/nonexistent/file.json"]])
def test_cli_api_bad_input_is_a_usage_or_configuration_error(fake, cli_env, args):
    result = run_cli(cli_env, *args)

    assert result.returncode in (2, 3) and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert all(record.path == "/api/healthz" for record in fake.requests) or fake.requests == []


class MisbehavingAPI(TcpPeer):
    """A RakerOne API on 127.0.0.1 that misbehaves on purpose, one mode at a time.

    ``silent``: accepts connections and never answers. ``hang_upgrade``: answers the
    run (running) and the ticket, then never answers the WebSocket upgrade.
    ``trickle_frame``: accepts the upgrade, then sends one frame a byte every 0.5 s.
    ``chatty``: accepts the upgrade, then sends an event every 0.3 s, the same one again
    after the first (a server replaying history). ``black_hole``: accepts the upgrade,
    then neither sends nor answers anything. The run ends ``finished_after`` seconds in.
    HTTP is parsed with h11 and the WebSocket with wsproto.
    """

    def __init__(self, mode: str, finished_after: float = math.inf) -> None:
        super().__init__()
        self.mode = mode
        self.finished_at = time.monotonic() + finished_after  # then the run reads as completed

    def serve(self, conn: socket.socket) -> None:
        conn.settimeout(0.05)
        while not self.stopping.is_set() and self.mode != "silent":
            http = h11.Connection(h11.SERVER)
            request = next_http_event(conn, http, self.stopping)
            if not isinstance(request, h11.Request):
                return
            if request.target.endswith(b"/ws-ticket"):
                send_h11_json(conn, http, {"ticket": "t-misbehaving"})
            elif b"/ws" in request.target:
                return self._websocket(conn, request)
            else:
                status = "completed" if time.monotonic() >= self.finished_at else "running"
                send_h11_json(conn, http, {"run": {"id": RUN, "status": status}})
                return
        self.stopping.wait()

    def _websocket(self, conn: socket.socket, request: h11.Request) -> None:
        if self.mode == "hang_upgrade":
            self.stopping.wait()
            return
        ws = wsproto.WSConnection(wsproto.ConnectionType.SERVER)
        ws.initiate_upgrade_connection(request.headers, request.target)
        conn.sendall(ws.send(wsproto.events.AcceptConnection()))
        if self.mode == "black_hole":  # upgraded, then nothing: no event, no pong
            self.stopping.wait()
            return
        if self.mode == "chatty":
            while not self.stopping.wait(0.3):
                conn.sendall(ws.send(wsproto.events.TextMessage(data=json.dumps({"type": "tick", "id": "e1"}))))
            return
        frame = ws.send(wsproto.events.TextMessage(data=json.dumps({"type": "tick", "id": "e1", "pad": "x" * 80})))
        for byte in frame:
            if self.stopping.wait(0.5):
                return
            try:
                conn.sendall(bytes([byte]))
            except OSError:
                return


@pytest.mark.slow
def test_cli_run_wait_timeout_is_a_hard_deadline(no_leaks):
    with MisbehavingAPI("trickle_frame") as api:
        env = dict(os.environ, RAKERONE_API_KEY=API_KEY, RAKERONE_BASE_URL=api.base_url)
        started = time.monotonic()

        result = run_command(env, "run", "wait", PROJECT, RUN, "--timeout", "1", timeout=30)

        elapsed = time.monotonic() - started
    assert result.returncode == 124, result.stderr
    assert elapsed < 1 + 1 + 1.5  # the deadline, its one second of slack, and starting Python
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("mode, exit_code", [("silent", 6), ("hang_upgrade", 124), ("trickle_frame", 124)])
def test_cli_run_wait_at_its_deadline_exits_by_what_it_saw(no_leaks, mode, exit_code):
    with MisbehavingAPI(mode) as api:
        result = run_cli({"RAKERONE_API_KEY": API_KEY, "RAKERONE_BASE_URL": api.base_url},
                         "run", "wait", PROJECT, RUN, "--timeout", "0.5")

    assert result.returncode == exit_code, result.stderr  # 6: the API never answered; 124: the run is running
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["silent", "hang_upgrade", "trickle_frame", "chatty"])
def test_wait_for_run_overruns_its_deadline_by_less_than_a_second(no_leaks, mode):
    with MisbehavingAPI(mode) as api, rakerone.Client(API_KEY, base_url=api.base_url) as client:
        started = time.monotonic()
        with pytest.raises(rakerone.WaitTimeoutError):
            client.wait_for_run(PROJECT, RUN, timeout=0.5)
        elapsed = time.monotonic() - started

    assert 0.5 <= elapsed < 0.5 + 1


def test_wait_for_run_rides_out_an_outage_of_503s_then_refusals(no_leaks, clock):
    fake = rakerone_fake.FakeRakerOne().start()
    port = int(fake.base_url.split(":")[2].split("/")[0])
    fake.add_run(PROJECT, {"id": RUN, "status": "running"})
    fake.reject_next_connections(1000, status=503)
    fake.fail_next_requests(1000, 503)
    servers = [fake]

    def outage(seconds: float) -> None:  # the wait's own sleeps move the story on
        if 4 <= clock.skipped < 10:  # 503s for 4 s, then nothing listens...
            servers[-1].stop()
        elif clock.skipped >= 10 and len(servers) == 1:  # ...until the API is back, the run finished
            servers.append(rakerone_fake.FakeRakerOne(port=port).start())
            servers[-1].add_run(PROJECT, {"id": RUN, "status": "completed"})

    clock.then = outage
    try:
        with rakerone.Client(fake.api_key, base_url=fake.base_url, timeout=1) as client:
            run = client.wait_for_run(PROJECT, RUN, timeout=40)
    finally:
        for server in servers:
            server.stop()

    assert run.status == "completed"
    assert len(servers) == 2 and 10 <= clock.skipped < 40


@pytest.mark.slow
def test_wait_for_run_gives_up_at_its_deadline_with_the_last_run_seen(fake):
    with rakerone.Client(fake.api_key, base_url=fake.base_url) as client:
        started = time.monotonic()
        with pytest.raises(rakerone.WaitTimeoutError, match="still running after 0.5 s") as raised:
            client.wait_for_run(PROJECT, RUN, timeout=0.5)

    assert time.monotonic() - started < 1.5
    assert raised.value.run.status == "running" and raised.value.run.id == RUN


def test_wait_for_run_stops_at_once_for_an_unknown_run(fake):
    with rakerone.Client(fake.api_key, base_url=fake.base_url) as client:
        with pytest.raises(rakerone.NotFoundError):
            client.wait_for_run(PROJECT, "no-such-run", timeout=30)


@pytest.mark.slow
def test_wait_for_run_returns_a_run_that_finishes_while_followed(fake):
    emit(fake, 1)

    def finish() -> None:
        time.sleep(0.5)
        fake.update_run(PROJECT, RUN, status="failed")
        fake.finish_run_stream(PROJECT, RUN)

    finisher = threading.Thread(target=finish)
    finisher.start()
    with rakerone.Client(fake.api_key, base_url=fake.base_url) as client:
        run = client.wait_for_run(PROJECT, RUN, timeout=20)
    finisher.join()

    assert run.status == "failed" and not run.succeeded


# .. Exit codes that never lie .........................................................


def run_shell(env, shell_command: str, timeout=20):
    command = " ".join(shlex.quote(part) for part in rakerone_command())
    return subprocess.run(["bash", "-c", shell_command.format(rakerone=command)], env=env,
                          capture_output=True, timeout=timeout)


def test_cli_json_output_is_utf8_json_in_an_ascii_locale(fake, cli_env):
    fake.update_run(PROJECT, RUN, status="completed", triggeredBy="Zoë ✓ 完了")
    env = dict(cli_env, PYTHONIOENCODING="ascii", LC_ALL="C", LANG="C")

    result = run_shell(env, f"{{rakerone}} run wait {PROJECT} {RUN}")

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.decode("utf-8"))["triggeredBy"] == "Zoë ✓ 完了"


@pytest.mark.parametrize("redirect", [">/dev/full", ">&-"], ids=["full disk", "closed stdout"])
@pytest.mark.parametrize("command", ["run get", "run events", "run ticket"])
def test_cli_output_that_cannot_be_written_exits_74(fake, cli_env, command, redirect):
    if redirect == ">/dev/full" and not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    emit(fake, 1)
    fake.finish_run_stream(PROJECT, RUN)

    result = run_shell(cli_env, f"{{rakerone}} {command} {PROJECT} {RUN} {redirect}")

    assert result.returncode == 74, result.stderr
    assert b"could not write the output" in result.stderr and b"Traceback" not in result.stderr


@pytest.mark.parametrize("redirect", [">&-", "| true"], ids=["closed stdout", "reader gone"])
def test_cli_run_wait_keeps_a_failed_runs_exit_code_when_stdout_is_gone(fake, cli_env, redirect):
    fake.update_run(PROJECT, RUN, status="failed", padding="x" * 200_000)  # more than a pipe holds

    result = run_shell(cli_env, f"set -o pipefail; {{rakerone}} run wait {PROJECT} {RUN} {redirect}")

    assert result.returncode == 1, result.stderr


def test_cli_an_unexpected_exception_exits_70_not_a_run_outcome(fake, cli_env):
    program = ("import sys, rakerone\n"
               "def broken(*args, **kwargs): raise KeyError('a bug')\n"
               "rakerone.Client.wait_for_run = broken\n"
               "sys.exit(rakerone.main(sys.argv[1:]))\n")

    result = subprocess.run([sys.executable, "-c", program, "run", "wait", PROJECT, RUN], env=cli_env,
                            capture_output=True, text=True, timeout=20)

    assert result.returncode == 70
    assert "internal error" in result.stderr and result.stderr.count("\n") == 1


@pytest.mark.slow
def test_the_demo_runs_to_the_end_offline(no_leaks):
    env = {name: value for name, value in os.environ.items()
           if "proxy" not in name.lower() and not name.startswith("RAKERONE_")}

    result = subprocess.run([sys.executable, "-m", "rakerone_fake", "demo", "--pace", "0"], env=env,
                            capture_output=True, text=True, timeout=60)  # README's command runs it paced, in CI

    assert result.returncode == 0, result.stderr
    assert "step.started   Run AI agent" in result.stdout
    assert "run.finished   completed" in result.stdout
    assert '"status": "completed"' in result.stdout and "$ echo $?\n0 " in result.stdout
    assert "log_004  Brief shaped: ready for a playbook" in result.stdout


# -- Fault soak and hostile input ------------------------------------------------------


@pytest.mark.slow
def test_fault_soak_delivers_every_event_exactly_once_in_order(fake, no_leaks, sleeps):
    """10,000 events through ≥20 drops, ticket expiry, 503 bursts, a 429 and a 1011."""
    total, chunk = 10_000, 500
    chaos = random.Random(20261123)
    # A fault only bites when it finds a live socket: events still buffered on the
    # client after a drop can trigger the next fault on a connection already gone.
    faults = {index: "drop" for index in chaos.sample(range(200, total - 200), 40)}
    for kind in ("expire", "expire", "expire", "503", "503", "429", "1011", "drop_after"):
        faults[chaos.choice([i for i in range(200, total - 200) if i not in faults])] = kind
    fake.single_use_tickets = True
    emitted = 0

    def emit_next_chunk():
        nonlocal emitted
        for n in range(emitted, min(emitted + chunk, total)):
            fake.emit_run_event(PROJECT, RUN, {"type": "tick", "id": str(n), "data": {"n": n}})
        emitted = min(emitted + chunk, total)
        if emitted == total:
            fake.finish_run_stream(PROJECT, RUN)

    emit_next_chunk()
    received = []
    started = time.monotonic()
    with rakerone.Client(fake.api_key, base_url=fake.base_url, timeout=5) as client:
        for event in client.iter_run_events(PROJECT, RUN, max_outage=30):
            index = int(event.id)
            received.append(index)
            fault = faults.pop(index, None)
            if fault == "expire":
                fake.expire_tickets()
            elif fault == "503":
                fake.fail_next_requests(3, 503, paths="ws-ticket")
            elif fault == "429":
                fake.fail_next_requests(1, 429, retry_after=1, paths="ws-ticket")
            elif fault == "drop_after":
                fake.drop_after_frames(chaos.randrange(1, 400), connections=3)
            if fault == "1011":
                fake.close_streams(1011)
            elif fault is not None:
                fake.drop_streams()
            if index == emitted - 1:
                emit_next_chunk()
    elapsed = time.monotonic() - started

    assert received == list(range(total))
    assert faults == {}
    assert fake.connections >= 1 + 20
    assert fake.tickets_minted == fake.connections
    assert elapsed < 45


def fake_as_proxy(client) -> requests.Session:
    """A session sending plain-http requests through the fake as a forward proxy.

    A request to any host then reaches the fake, so it shows in ``requests_seen``.
    """
    session = requests.Session()
    session.trust_env = False
    session.proxies = {"http": client.base_url.rsplit("/api", 1)[0]}
    return session


def get_run_with(client, **options):
    """Build a client like ``client`` (the fake's URL, the key from the environment) but
    with ``options``, and ask it for a run: traffic the fake sees, unless refused first."""
    options = {"base_url": client.base_url, **options}
    with rakerone.Client(**options) as other:
        return other.get_run(PROJECT, RUN)


# Each row calls something that sends a request or opens a stream unless the input is
# refused first; the fake has an event ready, so a stream that got through would return
# it at once instead of waiting.
HOSTILE_INPUTS = [
    # (what, a call that would reach the fake were the input not refused)
    ("empty project id", lambda c: c.get_run("", RUN)),
    ("blank run id", lambda c: c.get_run(PROJECT, " \t\n")),
    ("dot-dot run id", lambda c: c.mint_run_ticket(PROJECT, "..")),
    ("None brief id", lambda c: c.mint_brief_ticket(PROJECT, None)),
    ("bool run id", lambda c: c.get_run(PROJECT, False)),
    ("float run id", lambda c: c.get_run(PROJECT, 3.0)),
    ("bytes project id", lambda c: c.get_run(b"proj", RUN)),
    ("list run id", lambda c: c.get_run(PROJECT, ["r"])),
    ("stream with empty run id", lambda c: next(c.iter_run_events(PROJECT, ""))),
    ("stream with empty brief id", lambda c: next(c.iter_brief_events(PROJECT, ""))),
    ("zero ping_interval", lambda c: next(c.iter_run_events(PROJECT, RUN, ping_interval=0))),
    ("NaN ping_timeout", lambda c: next(c.iter_run_events(PROJECT, RUN, ping_timeout=float("nan")))),
    ("negative idle_timeout", lambda c: next(c.iter_brief_events(PROJECT, BRIEF, idle_timeout=-5))),
    ("string max_outage", lambda c: next(c.iter_run_events(PROJECT, RUN, max_outage="5"))),
    ("no api key", lambda c: get_run_with(c, api_key="")),
    ("api key with newline", lambda c: get_run_with(c, api_key="key\r\nX-Evil: 1")),
    ("base url without scheme", lambda c: get_run_with(c, base_url=c.base_url.split("://", 1)[1])),
    ("javascript base url", lambda c: get_run_with(c, base_url="javascript:alert(1)")),
    ("file base url", lambda c: get_run_with(c, base_url="file:///etc/passwd")),
    ("base url with query", lambda c: get_run_with(c, base_url=c.base_url + "?x=1")),
    ("plain http to a remote host",
     lambda c: get_run_with(c, base_url="http://rakerone.invalid/api", session=fake_as_proxy(c))),
    ("non-string base url", lambda c: get_run_with(c, base_url=8080)),
    ("zero timeout", lambda c: get_run_with(c, timeout=0)),
    ("NaN timeout", lambda c: get_run_with(c, timeout=float("nan"))),
    ("negative read timeout", lambda c: get_run_with(c, timeout=(1, -1))),
    ("bool timeout", lambda c: get_run_with(c, timeout=True)),
    ("negative max_retries", lambda c: get_run_with(c, max_retries=-1)),
    ("verify as a number", lambda c: get_run_with(c, verify=1)),
]


@pytest.mark.parametrize("what, call", HOSTILE_INPUTS, ids=[what for what, _ in HOSTILE_INPUTS])
def test_hostile_input_raises_configuration_error_before_any_traffic(fake, rakerone_client, monkeypatch,
                                                                     what, call):
    monkeypatch.setenv("RAKERONE_API_KEY", fake.api_key)
    emit(fake, 1)

    with pytest.raises(rakerone.ConfigurationError) as raised:
        call(rakerone_client)

    assert isinstance(raised.value, ValueError)
    assert fake.requests_seen == []


# -- The fake as a test tool -----------------------------------------------------------
# What users get to test their own code: full request records, faults aimed at one
# stream, canned routes, a loopback-only bind, and the pytest plugin (rakerone_pytest).


def bearer(fake) -> dict:
    return {"Authorization": f"Bearer {fake.api_key}"}


def stream_upgrades(fake, segment: str) -> int:
    """How many WebSocket upgrades the fake saw for run ("playbook-runs") or brief ("briefs") streams."""
    return sum(1 for record in fake.requests if record.path.endswith("/ws") and f"/{segment}/" in record.path)


def test_records_carry_method_path_query_redacted_headers_and_json_body(fake):
    url = f"{fake.base_url}/projects/{PROJECT}/playbook-runs?limit=50&tag=a&tag=b"

    requests.post(url, json={"playbookId": "pb_1"}, headers=dict(bearer(fake), **{"X-Trace": "t1"}), timeout=5)

    record = fake.requests[-1]
    assert (record.method, record.path) == ("POST", f"/api/projects/{PROJECT}/playbook-runs")
    assert record.query == (("limit", "50"), ("tag", "a"), ("tag", "b"))
    assert record.headers["Authorization"] == "Bearer ***"
    assert record.headers["X-Trace"] == "t1"
    assert record.headers["Content-Type"] == "application/json"
    assert record.json == {"playbookId": "pb_1"}
    assert fake.api_key not in repr(fake.requests)


def test_records_keep_a_body_that_is_not_json_raw_and_its_json_none(fake):
    requests.put(f"{fake.base_url}/anything", data=b"\xffnot json", headers=bearer(fake), timeout=5)
    requests.delete(f"{fake.base_url}/anything", headers=bearer(fake), timeout=5)

    not_json, empty = fake.requests
    assert (not_json.body, not_json.json) == (b"\xffnot json", None)
    assert (empty.body, empty.json, empty.query) == (b"", None, ())


def test_records_are_frozen_and_requests_seen_still_lists_method_and_path(fake, rakerone_client):
    rakerone_client.get_run(PROJECT, RUN)
    fake.finish_run_stream(PROJECT, RUN)
    list(rakerone_client.iter_run_events(PROJECT, RUN))

    records = fake.requests
    assert fake.requests_seen == [(record.method, record.path) for record in records]
    assert [method for method, _ in fake.requests_seen] == ["GET", "POST", "GET"]  # run, ticket, upgrade
    assert records[0].headers["User-Agent"].startswith("rakerone-python/")
    with pytest.raises(AttributeError):
        records[0].path = "/elsewhere"
    with pytest.raises(TypeError):
        records[0].headers["Authorization"] = fake.api_key


AIMED_FAULTS = [
    # (fault aimed at the run's stream, what the run's reader then gets: None = a reconnect)
    ("drop_streams", lambda fake: fake.drop_streams(run_id=RUN), None),
    ("close_streams", lambda fake: fake.close_streams(1011, project_id=PROJECT, run_id=RUN), None),
    ("send_raw_frame", lambda fake: fake.send_raw_frame("not json", run_id=RUN), rakerone.StreamError),
    ("stop_answering_pings", lambda fake: fake.stop_answering_pings(run_id=RUN), rakerone.StreamTimeoutError),
]


@pytest.mark.slow
@pytest.mark.parametrize("fault, run_outcome", [row[1:] for row in AIMED_FAULTS], ids=[row[0] for row in AIMED_FAULTS])
def test_a_fault_aimed_at_one_stream_leaves_another_stream_alone(fake, rakerone_client, monkeypatch, fault, run_outcome):
    monkeypatch.setattr(rakerone, "CLOSE_TIMEOUT", 0.1)  # a peer that stopped answering will not say goodbye
    fake.emit_run_event(PROJECT, RUN, run_event(1))
    fake.emit_brief_event(PROJECT, BRIEF, {"type": "shaping.log", "id": "l1"})
    run_events = rakerone_client.iter_run_events(PROJECT, RUN, idle_timeout=1)
    brief_events = rakerone_client.iter_brief_events(PROJECT, BRIEF, idle_timeout=1)
    try:
        assert (next(run_events).id, next(brief_events).id) == ("e1", "l1")

        fault(fake)
        fake.emit_run_event(PROJECT, RUN, run_event(2))
        fake.emit_brief_event(PROJECT, BRIEF, {"type": "shaping.log", "id": "l2"})

        assert next(brief_events).id == "l2"
        assert stream_upgrades(fake, "briefs") == 1
        if run_outcome is None:
            assert next(run_events).id == "e2"
            assert stream_upgrades(fake, "playbook-runs") == 2
        else:
            with pytest.raises(run_outcome):
                next(run_events)
    finally:
        run_events.close()
        brief_events.close()


def test_a_rejection_aimed_at_a_brief_lets_the_run_stream_connect(fake, rakerone_client):
    fake.reject_next_connections(1, 404, brief_id=BRIEF)
    emit(fake, 1)

    run_events = rakerone_client.iter_run_events(PROJECT, RUN)
    try:
        assert next(run_events).id == "e1"
    finally:
        run_events.close()
    with pytest.raises(rakerone.NotFoundError):
        next(rakerone_client.iter_brief_events(PROJECT, BRIEF))


def test_resuming_pings_for_a_target_never_silenced_is_an_error(fake):
    fake.stop_answering_pings(run_id=RUN)

    with pytest.raises(ValueError, match=f"silenced: run {RUN}"):
        fake.resume_answering_pings(brief_id=BRIEF)
    fake.resume_answering_pings(run_id=RUN)


def test_scripting_methods_return_none_and_update_run_returns_the_merged_run(fake):
    added = [fake.add_run(PROJECT, {"id": "run_2"}), fake.add_brief(PROJECT, "brief_2"),
             fake.emit_brief_event(PROJECT, "brief_2", {"id": "l1"}),
             fake.add_route("GET", "/projects", json=[])]

    assert added == [None, None, None, None]
    assert fake.update_run(PROJECT, "run_2", status="queued") == {"id": "run_2", "status": "queued"}


def test_fail_next_requests_fails_one_request_by_default(fake, rakerone_client):
    fake.fail_next_requests(status=404)

    with pytest.raises(rakerone.NotFoundError):
        rakerone_client.get_run(PROJECT, RUN)
    assert rakerone_client.get_run(PROJECT, RUN).id == RUN


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE"])
def test_a_canned_route_answers_its_method_and_path_with_its_status_body_and_headers(fake, method):
    fake.add_route(method, f"/projects/{PROJECT}/playbook-runs", status=201,
                   json={"run": {"id": "run_new"}}, headers={"Location": "/api/runs/run_new"})

    response = requests.request(method, f"{fake.base_url}/projects/{PROJECT}/playbook-runs?x=1",
                                headers=bearer(fake), timeout=5)

    assert response.status_code == 201
    assert response.json() == {"run": {"id": "run_new"}}
    assert response.headers["Location"] == "/api/runs/run_new"


def test_a_canned_route_still_requires_the_key_and_only_answers_its_method(fake):
    fake.add_route("POST", f"projects/{PROJECT}/playbook-runs", status=201, json={"ok": True})
    url = f"{fake.base_url}/projects/{PROJECT}/playbook-runs"

    without_key = requests.post(url, timeout=5)
    other_method = requests.get(url, headers=bearer(fake), timeout=5)

    assert (without_key.status_code, without_key.json()) == (401, {"error": "unauthorized"})
    assert (other_method.status_code, other_method.json()) == (404, {"error": "not_found"})


def test_an_unknown_path_is_a_404_error_response_and_is_recorded(fake):
    response = requests.get(f"{fake.base_url}/projects/{PROJECT}/nothing-here", headers=bearer(fake), timeout=5)

    assert (response.status_code, response.json()) == (404, {"error": "not_found"})
    assert fake.requests_seen == [("GET", f"/api/projects/{PROJECT}/nothing-here")]


def test_a_canned_route_is_checked_before_the_built_in_endpoints(fake, rakerone_client):
    fake.add_route("GET", f"/projects/{PROJECT}/playbook-runs/{RUN}", json={"not": "a run"})

    with pytest.raises(rakerone.UnexpectedResponseError):
        rakerone_client.get_run(PROJECT, RUN)


@pytest.mark.parametrize("host", ["", "0.0.0.0", "::", "192.0.2.1", "rakerone.invalid"])
def test_the_fake_refuses_a_host_that_is_not_loopback_without_allow_remote(host):
    with pytest.raises(ValueError, match="allow_remote=True"):
        rakerone_fake.FakeRakerOne(host=host)


def test_the_fake_takes_loopback_hosts_and_an_explicit_allow_remote():
    for host in ("127.0.0.1", "127.0.0.2", "::1", "localhost", "LOCALHOST"):
        rakerone_fake.FakeRakerOne(host=host)
    fake = rakerone_fake.FakeRakerOne(host="", allow_remote=True)  # never started here

    fake.allow_remote = False
    with pytest.raises(ValueError, match="every interface"):
        fake.start()


def test_the_fake_command_line_refuses_a_remote_host_without_allow_remote(capsys):
    with pytest.raises(SystemExit) as exited:
        rakerone_fake.main(["--host", "192.0.2.1", "serve"])  # TEST-NET-1: never bound, never reached

    assert exited.value.code == 2
    assert "--allow-remote" in capsys.readouterr().err


# A user's own settings, which the fixtures override during a test and restore after;
# were they not overridden, nothing would leave the machine (.invalid never resolves).
USERS_OWN_SETTINGS = {"RAKERONE_BASE_URL": "https://rakerone.invalid/api", "RAKERONE_API_KEY": "users-own-key"}


def run_pytest(tmp_path, test_source: str, *python_prefix: str) -> subprocess.CompletedProcess:
    """Run pytest in a fresh process on one generated test file, as a user's project would."""
    (tmp_path / "test_user_code.py").write_text(test_source)
    command = [sys.executable, *python_prefix, "-p", "no:cacheprovider", "-q", "test_user_code.py"]
    env = dict(os.environ, **USERS_OWN_SETTINGS)
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)


def readme_fake_example() -> str:
    """The Python example of README's section on testing with the fake, as written."""
    with open(os.path.join(os.path.dirname(__file__), "README.md"), encoding="utf-8") as readme:
        section = readme.read().split("## Testing your code with the fake", 1)[1].split("\n## ", 1)[0]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


USER_TESTS_AFTER_THE_README_EXAMPLE = '''
import os, socket, subprocess, sys, pytest

seen = {}

def test_the_rakerone_command_talks_to_the_fake_too(rakerone_fake):
    rakerone_fake.add_run("proj_1", {"id": "run_3", "status": "failed"})
    result = subprocess.run([sys.executable, "-m", "rakerone", "run", "get", "proj_1", "run_3"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and '"failed"' in result.stdout, result.stderr
    seen["port"] = rakerone_fake.port

def test_after_a_test_the_fake_is_stopped_and_the_environment_restored():
    assert os.environ["RAKERONE_BASE_URL"] == "https://rakerone.invalid/api"
    assert os.environ["RAKERONE_API_KEY"] == "users-own-key"
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", seen["port"]), timeout=5)
'''


@pytest.mark.slow
def test_the_installed_pytest_plugin_runs_readmes_example_and_points_the_environment_at_the_fake(tmp_path):
    result = run_pytest(tmp_path, readme_fake_example() + USER_TESTS_AFTER_THE_README_EXAMPLE, "-m", "pytest")

    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 passed" in result.stdout


@pytest.mark.slow
def test_the_pytest_plugin_can_be_turned_off_by_its_name(tmp_path):
    result = run_pytest(tmp_path, readme_fake_example(), "-m", "pytest", "-p", "no:rakerone")

    assert result.returncode == 1
    assert "fixture 'rakerone_fake' not found" in result.stdout


USER_TESTS_WITHOUT_THE_FAKE_EXTRA = '''
def test_pytest_starts_with_the_plugin_loaded(pytestconfig):
    assert pytestconfig.pluginmanager.has_plugin("rakerone")

def test_the_fixture_says_what_to_install(rakerone_fake):
    pass
'''
# werkzeug and simple-websocket made unimportable, as when only the client is installed.
WITHOUT_THE_FAKE_EXTRA = ("import sys; sys.modules.update(werkzeug=None, simple_websocket=None); "
                          "import pytest; sys.exit(pytest.main(sys.argv[1:]))")


@pytest.mark.slow
def test_the_pytest_plugin_loads_without_the_fake_extra_and_its_fixture_says_what_to_install(tmp_path):
    result = run_pytest(tmp_path, USER_TESTS_WITHOUT_THE_FAKE_EXTRA, "-c", WITHOUT_THE_FAKE_EXTRA)

    assert "1 passed, 1 error" in result.stdout, result.stdout + result.stderr
    assert "install rakerone with its 'fake' extra" in result.stdout


# -- Alive, quiet, dead or expired ---------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(20)  # before, each dead connection outlived CONNECTION_WORKS_AFTER and counted as working
def test_a_black_hole_that_upgrades_and_never_answers_is_given_up_within_the_outage_budget(no_leaks, clock):
    with MisbehavingAPI("black_hole") as api, rakerone.Client(API_KEY, base_url=api.base_url) as client:
        started = clock.now()
        with pytest.raises(rakerone.StreamDisconnectedError, match=r"max_outage=1 s\): no answer to a ping"):
            next(client.iter_run_events(PROJECT, RUN, ping_interval=0.2, ping_timeout=0.2, max_outage=1))
        elapsed = clock.now() - started

    assert elapsed < 1 + 0.2 + 0.2 + 1  # the budget, plus one attempt (and a second of slack)


@pytest.mark.slow
def test_a_quiet_stream_whose_tickets_expire_survives_every_expiry(fake, rakerone_client, monkeypatch):
    monkeypatch.setattr(rakerone, "CONNECTION_WORKS_AFTER", 0.2)  # a pong after 0.2 s open is life
    emit(fake, 1)

    def expire_three_times_then_finish():  # each connection answers pings for ~0.4 s, no event
        for connection in (1, 2, 3):
            fake.wait_for(lambda n=connection: fake.live_connections == 1 and fake.connections == n)
            time.sleep(0.4)
            fake.close_streams(4401, "ticket expired")
        fake.wait_for(lambda: fake.connections == 4)
        fake.finish_run_stream(PROJECT, RUN)

    expirer = threading.Thread(target=expire_three_times_then_finish)
    expirer.start()
    try:
        ids = [event.id for event in rakerone_client.iter_run_events(PROJECT, RUN, ping_interval=0.1)]
    finally:
        expirer.join()

    assert ids == ["e1"]
    assert fake.tickets_minted == fake.connections == 4


def test_a_ticket_refused_at_once_after_an_expiry_raises_authentication_error(fake, rakerone_client):
    emit(fake, 1)
    events = rakerone_client.iter_run_events(PROJECT, RUN, ping_interval=0.2)
    next(events)
    fake.reject_next_connections(5, close_code=4401)  # every fresh ticket refused at once
    fake.close_streams(4401)

    with pytest.raises(rakerone.AuthenticationError, match="twice in a row"):
        next(events)

    assert fake.tickets_minted == 2  # the expired one and its replacement: refused twice in a row


@pytest.mark.slow
def test_duplicates_do_not_hold_off_idle_timeout(no_leaks, monkeypatch):
    monkeypatch.setattr(rakerone, "CLOSE_TIMEOUT", 0.1)  # the server never answers our goodbye
    with MisbehavingAPI("chatty") as api, rakerone.Client(API_KEY, base_url=api.base_url) as client:
        started = time.monotonic()
        events = client.iter_run_events(PROJECT, RUN, idle_timeout=1)
        assert next(events).id == "e1"
        with pytest.raises(rakerone.StreamTimeoutError, match="idle_timeout"):
            next(events)  # e1 again every 0.3 s: no news
        elapsed = time.monotonic() - started
        events.close()

    assert elapsed < 1.5 + rakerone.CLOSE_TIMEOUT


@pytest.mark.slow
def test_idle_timeout_counts_across_reconnects(fake, rakerone_client):
    stop = threading.Event()

    def close_idle_connections():  # as a proxy that cuts idle connections does
        while not stop.wait(0.25):
            fake.close_streams(1001)

    closer = threading.Thread(target=close_idle_connections)
    closer.start()
    started = time.monotonic()
    try:
        with pytest.raises(rakerone.StreamTimeoutError, match="idle_timeout"):
            list(rakerone_client.iter_run_events(PROJECT, RUN, idle_timeout=0.8))
    finally:
        stop.set()
        closer.join()

    assert 0.8 <= time.monotonic() - started < 1.8
    assert fake.connections >= 2  # the idle time ran on across a reconnect at least


@pytest.mark.slow
def test_run_wait_notices_a_finished_run_despite_a_duplicate_heartbeat(no_leaks, monkeypatch):
    monkeypatch.setattr(rakerone, "CLOSE_TIMEOUT", 0.1)  # the server never answers our goodbye
    with MisbehavingAPI("chatty", finished_after=0.5) as api:
        started = time.monotonic()
        result = run_cli({"RAKERONE_API_KEY": API_KEY, "RAKERONE_BASE_URL": api.base_url},
                              "run", "wait", "--timeout", "8", PROJECT, RUN)
        elapsed = time.monotonic() - started

    assert result.returncode == 0, result.stderr
    assert elapsed < 3  # noticed at the first quiet second's look, not at the deadline


@pytest.mark.slow
def test_wait_for_run_notices_a_run_finished_without_a_final_event(fake, rakerone_client):
    finisher = threading.Timer(1.0, lambda: fake.update_run(PROJECT, RUN, status="completed"))
    finisher.start()
    started = time.monotonic()
    try:
        run = rakerone_client.wait_for_run(PROJECT, RUN, timeout=20)
    finally:
        finisher.join()

    assert run.status == "completed"
    assert time.monotonic() - started < 4


@pytest.mark.slow
def test_wait_for_run_takes_a_last_look_before_its_deadline(no_leaks):
    with MisbehavingAPI("chatty", finished_after=0.5) as api, \
            rakerone.Client(API_KEY, base_url=api.base_url) as client:
        run = client.wait_for_run(PROJECT, RUN, timeout=1)  # looked at 0 s, then followed until 0.9 s

    assert run.status == "completed"


class FakeTime:
    """A clock for the policy alone: time passes only when the test or a sleep says so."""

    def __init__(self) -> None:
        self.t = 1000.0
        self.sleeps: list = []

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += seconds


EVIDENCE = hypothesis.strategies.lists(hypothesis.strategies.one_of(
    hypothesis.strategies.tuples(hypothesis.strategies.just("advance"), hypothesis.strategies.floats(0, 30)),
    hypothesis.strategies.tuples(hypothesis.strategies.sampled_from(
        ["open", "event", "answered", "duplicate", "refused"]), hypothesis.strategies.just(0.0)),
    hypothesis.strategies.tuples(hypothesis.strategies.just("lost"),
                                 hypothesis.strategies.sampled_from([0.0, 0.5, 5.0, 90.0])),
), max_size=40)


@pytest.mark.slow
@hypothesis.settings(max_examples=300, deadline=None)
@hypothesis.given(max_outage=hypothesis.strategies.sampled_from([0.0, 1.0, 10.0, 60.0]), steps=EVIDENCE)
def test_the_reconnect_policy_keeps_its_budget_whatever_the_evidence(max_outage, steps):
    fake_time = FakeTime()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(rakerone, "_clock", fake_time)
        alive = rakerone._Liveness("/p", rakerone._StreamSettings(max_outage=max_outage))
        # The model: when the outage began (None while a connection shows life), refusals in a row.
        outage_since, opened_at, refusals = fake_time.t, fake_time.t, 0
        for kind, value in steps:
            if kind == "advance":
                fake_time.t += value
            elif kind == "open":
                alive.opened()
                opened_at = fake_time.t
            elif kind == "event" or (kind == "answered" and fake_time.t - opened_at >= 0.5 and outage_since):
                alive.shown_life() if kind == "event" else alive.answered()
                outage_since, refusals = None, 0
            elif kind in ("answered", "duplicate"):
                alive.answered() if kind == "answered" else None  # no evidence yet, or none at all
            else:
                outage_since = fake_time.t if outage_since is None else outage_since
                outage, slept = fake_time.t - outage_since, len(fake_time.sleeps)
                error = rakerone.ServerError("the server restarts", retry_after=value or None)
                if kind == "refused":
                    refusals += 1
                    if refusals >= 2:
                        with pytest.raises(rakerone.AuthenticationError):
                            alive.ended(rakerone._Lost(error, refused=True))
                        return
                    alive.ended(rakerone._Lost(error, refused=True))
                    assert len(fake_time.sleeps) == slept  # a fresh ticket at once
                elif max_outage == 0 or outage >= max_outage or value > max_outage - outage:
                    with pytest.raises(rakerone.StreamDisconnectedError):
                        alive.ended(rakerone._Lost(error))
                    return
                else:
                    alive.ended(rakerone._Lost(error))
                    delay = fake_time.sleeps[-1]
                    assert value <= delay <= max(value, rakerone.RECONNECT_BACKOFF_CAP)  # never sooner
                    assert delay <= max_outage - outage


# -- The stream reader keeps websocket-client's contract -------------------------------------


@contextlib.contextmanager
def reader_on_a_socketpair(*args, **options):
    """rakerone's WebSocket reader on one end of a socketpair, connected; and the other end."""
    ours, peer = socket.socketpair()
    ws = rakerone._read_ahead_websocket_class()(*args, **options)
    ws.sock, ws.connected = ours, True
    try:
        yield ws, peer
    finally:
        ours.close()
        peer.close()


def test_the_reader_gives_recv_text_as_str_and_binary_as_bytes():
    with reader_on_a_socketpair() as (ws, peer):
        peer.sendall(b"\x81\x05Hello\x82\x03abc")

        assert (ws.recv(), ws.recv()) == ("Hello", b"abc")


def test_a_first_fragment_cut_by_a_timeout_joins_even_while_its_exception_is_kept(monkeypatch):
    import websocket

    monkeypatch.setattr(rakerone, "READ_AHEAD_BYTES", 64)  # a 200-byte payload takes the long way
    kept = []
    with reader_on_a_socketpair() as (ws, peer):
        ws.settimeout(0.05)
        first, second = b"a" * 200, b"b" * 10
        fragment = bytes([0x01, 126]) + len(first).to_bytes(2, "big") + first  # text, not final
        peer.sendall(fragment[:100])
        with pytest.raises(websocket.WebSocketTimeoutException) as timed_out:
            ws.recv()
        kept.append(timed_out.value)  # its traceback holds the reader's frames
        peer.sendall(fragment[100:] + bytes([0x80, len(second)]) + second)

        assert ws.recv() == "a" * 200 + "b" * 10


def test_the_reader_takes_websocket_clients_arguments_positionally_too():
    def mask_key(length):
        return b"\0" * length

    with reader_on_a_socketpair(mask_key, None, None, False, False, True) as (ws, peer):
        peer.sendall(b"\x81\x02\xff\xfe")  # not UTF-8: only a reader told to skip the check passes it

        assert ws.get_mask_key is mask_key
        assert ws.recv_data()[1] == b"\xff\xfe"


def frame_bytes(opcode: int, payload: bytes, fin: bool, mask: Optional[bytes]) -> bytes:
    length = len(payload)
    head = bytes([(0x80 if fin else 0) | opcode])
    mask_bit = 0x80 if mask else 0
    if length < 126:
        head += bytes([mask_bit | length])
    elif length < 65536:
        head += bytes([mask_bit | 126]) + length.to_bytes(2, "big")
    else:
        head += bytes([mask_bit | 127]) + length.to_bytes(8, "big")
    if mask:
        repeated = (mask * (length // 4 + 1))[:length]
        payload = (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(length, "big")
        head += mask
    return head + payload


#: Payloads over 64 KiB (the 8-byte length class): a generated pattern repeated, as drawing
#: each byte would take hypothesis far longer than the test.
LONG_PAYLOADS = hypothesis.strategies.builds(
    lambda size, pattern: (pattern * (size // len(pattern) + 1))[:size],
    hypothesis.strategies.integers(65536, 66000), hypothesis.strategies.binary(min_size=1, max_size=64))
FRAMES = hypothesis.strategies.lists(hypothesis.strategies.one_of(
    hypothesis.strategies.tuples(  # data and continuation frames, of every length class
        hypothesis.strategies.sampled_from([0x0, 0x1, 0x2]), hypothesis.strategies.booleans(),
        hypothesis.strategies.binary(max_size=300) | LONG_PAYLOADS),
    hypothesis.strategies.tuples(  # control frames: always final, at most 125 bytes
        hypothesis.strategies.sampled_from([0x9, 0xA]), hypothesis.strategies.just(True),
        hypothesis.strategies.binary(max_size=125)),
), min_size=1, max_size=8).filter(  # at most two long frames: a socketpair's buffer holds the stream unread
    lambda frames: sum(len(payload) for _, _, payload in frames) < 140_000)


def read_frames(ws, peer, stream: bytes, cuts: list) -> list:
    """Feed ``stream`` to ``ws`` in pieces cut at ``cuts``, reading after each piece until
    a read times out; the frames read, the timeouts seen and the error that ended it."""
    import websocket

    seen, pieces = [], [stream[i:j] for i, j in zip([0, *cuts], [*cuts, len(stream)])]
    for piece in pieces:
        peer.sendall(piece)
        while True:
            try:
                opcode, frame = ws.recv_data_frame(True)
            except websocket.WebSocketTimeoutException:
                seen.append("timeout")
                break
            except Exception as exc:  # noqa: BLE001 - the same error is the point
                return [*seen, type(exc).__name__]
            seen.append((opcode, bytes(frame.data), type(frame.data).__name__))
    return seen


@pytest.mark.slow
@hypothesis.settings(max_examples=150, deadline=None, suppress_health_check=[hypothesis.HealthCheck.too_slow])
@hypothesis.given(frames=FRAMES, masked=hypothesis.strategies.booleans(), data=hypothesis.strategies.data())
def test_the_reader_gives_the_same_frames_or_errors_as_websocket_client(frames, masked, data):
    import websocket

    stream = b"".join(frame_bytes(opcode, payload, fin, b"\x01\x02\x03\x04" if masked else None)
                      for opcode, fin, payload in frames)
    cuts = sorted(set(data.draw(hypothesis.strategies.lists(
        hypothesis.strategies.integers(1, max(1, len(stream) - 1)), max_size=6))))
    results = []
    for make in (websocket.WebSocket, rakerone._read_ahead_websocket_class()):
        ours, peer = socket.socketpair()
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)  # room for the whole stream unread
        ws = make(skip_utf8_validation=True)
        ws.sock, ws.connected = ours, True
        ws.settimeout(0.001)  # the piece is in the socket already: only waiting for more times out
        try:
            results.append(read_frames(ws, peer, stream, cuts))
        finally:
            ours.close()
            peer.close()

    assert results[1] == results[0]


# -- Secrets and bad input, closed at the source ---------------------------------------------

KEY = "sk_live_0123456789abcdefghijklmn"


def ticket_minting_page(request):
    ticket = f"tk_{uuid.uuid4().hex}"
    return 200, {}, json.dumps({"ticket": ticket})


@pytest.mark.slow
def test_the_key_is_redacted_after_any_number_of_tickets(mocked):
    mocked.add_callback(responses.POST, f"{BASE_URL}/projects/p/playbook-runs/r/ws-ticket", callback=ticket_minting_page)
    mocked.get(f"{BASE_URL}/projects/p/playbook-runs/r", status=403, body=f"key {KEY} may not do this")
    with rakerone.Client(KEY, base_url=BASE_URL) as client:
        for _ in range(rakerone.TICKETS_REMEMBERED + 44):
            client.mint_run_ticket("p", "r")
        with pytest.raises(rakerone.PermissionDeniedError) as raised:
            client.get_run("p", "r")

    assert KEY not in str(raised.value) and "key *** may not" in str(raised.value)


def chain(error: BaseException) -> list:
    """The error, its causes and contexts, and what each keeps (requests and responses)."""
    seen, found = [], [error]
    while found:
        exc = found.pop()
        if exc is not None and exc not in seen:
            seen.append(exc)
            found += [exc.__cause__, exc.__context__]
    return seen + [getattr(exc, name, None) for exc in seen for name in ("request", "response")]


def test_no_error_holds_or_pickles_the_key(mocked, refused_port):
    mocked.get(f"{BASE_URL}/projects/p/playbook-runs/r", status=404, json={"error": "not_found"})
    with rakerone.Client(KEY, base_url=BASE_URL) as client, pytest.raises(rakerone.NotFoundError) as answered:
        client.get_run("p", "r")
    mocked.stop()
    unreachable = rakerone.Client(KEY, base_url=f"http://127.0.0.1:{refused_port}/api", max_retries=0)
    with unreachable, pytest.raises(rakerone.APIConnectionError) as refused:
        unreachable.get_run("p", "r")

    for error in (answered.value, refused.value):
        kept = [repr(vars(item)) for item in chain(error) if item is not None and hasattr(item, "__dict__")]
        kept += [repr(dict(item.headers)) for item in chain(error) if hasattr(item, "headers")]
        assert not any(KEY in text for text in kept)
        assert KEY.encode() not in pickle.dumps(error)
    assert answered.value.response.request.headers["Authorization"] == "Bearer ***"
    assert pickle.loads(pickle.dumps(answered.value)).response.json() == {"error": "not_found"}


def answer_upgrade_with(answer: bytes):
    def serve(conn, stopping):
        conn.recv(65536)  # the upgrade request
        with contextlib.suppress(OSError):
            conn.sendall(answer)
        stopping.wait(5)
    return serve


@pytest.mark.slow
@pytest.mark.parametrize("answer, refused", [
    pytest.param(b"HTTP/1.1 101 Switching Protocols\r\nX-Big: " + b"a" * 7_000_000 + b"\r\n\r\n",
                 "over 64 KiB", id="a 7 MB header line"),
    pytest.param(b"HTTP/1.1 101 Switching Protocols\r\n" + b"X-Many: 1\r\n" * 200 + b"\r\n",
                 "or 102 lines", id="200 header lines"),
    pytest.param(b"HTTP/1.1 500 " + b"b" * 4_000_000 + b"\r\n\r\n", "over 64 KiB", id="a 4 MB status line"),
])
def test_the_upgrade_answer_is_bounded(no_leaks, answer, refused):
    with TcpPeer(answer_upgrade_with(answer)) as ws_peer, ScriptedPeer(ticket_for(ws_peer.address)) as api, \
            rakerone.Client(ODD_KEY, base_url=api.base_url, timeout=5, max_retries=0) as client:
        messages = []

        def open_the_stream():
            try:
                next(client.iter_run_events(PROJECT, RUN, max_outage=0))
            except rakerone.StreamError as exc:
                messages.append(str(exc))
        growth = peak_rss_growth_mib(open_the_stream)

    assert len(messages) == 1 and refused in messages[0] and len(messages[0]) < 400
    assert growth < 20


def test_a_redirect_answering_the_upgrade_is_never_read_as_events(no_leaks):
    forged = b'["forged"]'
    answer = (b"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:9/elsewhere\r\n"
              b"Content-Length: %d\r\n\r\n%s" % (len(forged), forged))
    with TcpPeer(answer_upgrade_with(answer)) as ws_peer, ScriptedPeer(ticket_for(ws_peer.address)) as api, \
            rakerone.Client(ODD_KEY, base_url=api.base_url, timeout=5, max_retries=0) as client:
        with pytest.raises(rakerone.APIError, match="302.*not followed"):
            next(client.iter_run_events(PROJECT, RUN, max_outage=0))


def test_an_upgrade_answer_that_does_not_prove_our_key_is_refused(no_leaks):
    answer = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n")  # RFC 6455's example, not ours
    with TcpPeer(answer_upgrade_with(answer)) as ws_peer, ScriptedPeer(ticket_for(ws_peer.address)) as api, \
            rakerone.Client(ODD_KEY, base_url=api.base_url, timeout=5, max_retries=0) as client:
        with pytest.raises(rakerone.StreamError):
            next(client.iter_run_events(PROJECT, RUN, max_outage=0))


def test_an_explicit_verify_wins_over_the_environments_ca_bundle(tls_fake, monkeypatch):
    fake, ca_bundle = tls_fake
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", ca_bundle)  # would trust the fake

    with rakerone.Client(fake.api_key, base_url=fake.base_url, verify=True, max_retries=0) as client:
        with pytest.raises(rakerone.APIConnectionError, match="TLS failed"):  # certifi's trust: it does not
            client.get_run(PROJECT, RUN)
    with rakerone.Client(fake.api_key, base_url=fake.base_url) as client:  # the environment's, when not given
        assert client.get_run(PROJECT, RUN).id == RUN


@pytest.mark.parametrize("args, code, fragment", [
    pytest.param(["--base-url", "https://app..raker.invalid/api", "run", "get", "p", "r"], 3, "not a usable URL",
                 id="an empty label in the base URL"),
    pytest.param(["--base-url", "https://app.raker .invalid/api", "run", "get", "p", "r"], 3, "not a usable URL",
                 id="a space in the base URL"),
    pytest.param(["run", "get", "p", "r\udcff"], 3, "not valid text", id="an id that is not UTF-8"),
    pytest.param(["api", "/projects/{}/x"], 2, "placeholder", id="a path with a placeholder"),
    pytest.param(["api", "-X", "G T", "/projects"], 2, "HTTP method", id="an unusable method"),
    pytest.param(["api", "--input", "-", "/projects"], 2, "NaN", id="NaN in the input"),
])
def test_input_mistakes_are_usage_or_configuration_errors_before_any_traffic(fake, cli_env, args, code, fragment):
    result = run_cli(cli_env, *args, stdin='{"price": NaN}')  # an id like "r\udcff": as Python reads bytes argv

    assert (result.returncode, result.stdout) == (code, "")
    assert fragment in result.stderr and "Traceback" not in result.stderr
    assert fake.requests_seen == []


@pytest.mark.parametrize("proxy, fragment", [("http://127.0.0.1:99999", "not usable"),
                                             ("socks5://127.0.0.1:1080", "PySocks")])
def test_an_unusable_proxy_is_a_configuration_error_before_any_traffic(fake, cli_env, proxy, fragment):
    if fragment == "PySocks" and importlib.util.find_spec("socks") is not None:
        pytest.skip("PySocks is installed here")
    result = run_command(dict(cli_env, http_proxy=proxy), "run", "get", PROJECT, RUN)

    assert result.returncode == 3 and fragment in result.stderr
    assert fake.requests_seen == []


def test_ctrl_c_while_the_command_starts_exits_130_quietly(monkeypatch):
    import builtins

    import rakerone_cli

    real_import = builtins.__import__

    def interrupted(name, *args, **kwargs):
        if name == "rakerone":
            raise KeyboardInterrupt
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", interrupted)
    assert rakerone_cli.main(["run", "get", "p", "r"]) == 130


def answer_with_a_length_but_no_body(conn, stopping) -> None:
    """HEAD: 200, GET: 204; both with the length a GET's body would have, and no body."""
    request = conn.recv(65536)
    status = b"200 OK" if request.startswith(b"HEAD") else b"204 No Content"
    conn.sendall(b"HTTP/1.1 " + status + b"\r\nContent-Length: 14\r\nConnection: close\r\n\r\n")


@pytest.mark.parametrize("method", ["HEAD", "GET"])
def test_head_and_204_read_no_body_whatever_their_length(no_leaks, method):
    with TcpPeer(answer_with_a_length_but_no_body) as peer, \
            rakerone.Client(ODD_KEY, base_url=peer.base_url, max_retries=0) as client:
        assert client.request(method, "/things") is None


def test_a_lone_surrogate_from_the_server_is_printed_as_its_escape(fake, cli_env):
    fake.add_route("GET", "/projects/p1/thing", json={"name": "half \ud83d an emoji"})

    result = run_cli(cli_env, "api", "/projects/p1/thing")

    assert result.returncode == 0
    assert json.loads(result.stdout) == {"name": "half \ud83d an emoji"}
    assert "\\ud83d" in result.stdout


def test_repeated_query_parameters_are_sent_as_given(fake, cli_env):
    fake.add_route("GET", "/projects/p1/runs", json=[])

    result = run_cli(cli_env, "api", "-X", "GET", "/projects/p1/runs?status=running&status=queued", "-f", "status=done")

    assert result.returncode == 0
    assert fake.requests[-1].query == (("status", "running"), ("status", "queued"), ("status", "done"))


ENCODINGS = {
    "raw": lambda secret: secret,
    "every byte percent-encoded": lambda secret: "".join(f"%{byte:02X}" for byte in secret.encode()),
    "base64": lambda secret: base64.b64encode(secret.encode()).decode(),
    "Basic auth": lambda secret: "Basic " + base64.b64encode(secret.encode() + b":").decode(),
    "JSON \\u escapes": lambda secret: "".join(f"\\u{ord(char):04x}" for char in secret),
    "HTML decimal references": lambda secret: "".join(f"&#{ord(char)};" for char in secret),
    "HTML hex references": lambda secret: "".join(f"&#x{ord(char):X};" for char in secret),
    "quote_plus": lambda secret: urllib.parse.quote_plus(secret),
}


@pytest.mark.slow
@hypothesis.settings(max_examples=100, deadline=None,
                     suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture])
@hypothesis.given(encoding=hypothesis.strategies.sampled_from(sorted(ENCODINGS)),
                  which=hypothesis.strategies.sampled_from(["key", "ticket"]),
                  offset=hypothesis.strategies.integers(-40, 40), status=hypothesis.strategies.sampled_from([500, 403]))
@hypothesis.example(encoding="JSON \\u escapes", which="key", offset=-22, status=500)  # a shorter form's start matched
@hypothesis.example(encoding="Basic auth", which="key", offset=-8, status=500)  # "Basic c2" left at the cut
def test_no_encoding_of_a_secret_survives_anywhere_around_the_cut(caplog, monkeypatch, encoding, which, offset,
                                                                 status):
    monkeypatch.setattr(rakerone, "ERROR_PAGE_BYTES", 4096)  # where the cut is does not matter; a small page is quick
    caplog.clear()
    caplog.set_level(logging.DEBUG, logger="rakerone")
    ticket = "tk_" + "7" * 30
    secret = ENCODINGS[encoding](KEY if which == "key" else ticket)
    at = rakerone.ERROR_PAGE_BYTES + offset  # around the point an error page is read to
    page = ("x" * at + secret + "y" * 64).encode()
    with responses.RequestsMock() as mock, rakerone.Client(KEY, base_url=BASE_URL, max_retries=0) as client:
        mock.post(f"{BASE_URL}/projects/p/playbook-runs/r/ws-ticket", json={"ticket": ticket})
        mock.get(f"{BASE_URL}/projects/p/playbook-runs/r", status=status, body=page)
        client.mint_run_ticket("p", "r")
        with pytest.raises(rakerone.APIError) as raised:
            client.get_run("p", "r")

    kept = [str(raised.value), repr(raised.value), raised.value.response.text, caplog.text]
    pickled = pickle.dumps(raised.value).decode("latin-1")
    leaks = [text for text in [*kept, pickled] if secret[:8] in text or secret[-8:] in text]
    assert leaks == []


TEXT = hypothesis.strategies.text(hypothesis.strategies.characters(blacklist_categories=("Cs",)), max_size=12) | \
    hypothesis.strategies.sampled_from(["", " ", "..", "{}", "%2e%2e", "p\udcff", "-1", "1e999", "NaN", "\n"])


@hypothesis.settings(max_examples=60, deadline=None,
                     suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture])
@hypothesis.given(
    command=hypothesis.strategies.sampled_from(
        [["run", "get"], ["run", "ticket"], ["brief", "ticket"], ["api"], ["api", "-X"], ["run", "wait", "--timeout"]]),
    words=hypothesis.strategies.lists(TEXT, min_size=1, max_size=3),
    base_url=hypothesis.strategies.sampled_from(["fake", "", "http://", "https://app..raker.invalid/api",
                                                 "ftp://127.0.0.1/api", "http://127.0.0.1:99999/api"]),
    api_key=hypothesis.strategies.sampled_from(["fake", "", "bad key", "k\x7f\u00e9"]),
    body=hypothesis.strategies.sampled_from(['{"a": 1}', "NaN", "[1, Infinity]", "{", "\udcff", "null"]))
def test_the_command_line_never_fails_as_a_bug_nor_prints_the_key(fake, command, words, base_url, api_key, body):
    env = {"RAKERONE_BASE_URL": fake.base_url if base_url == "fake" else base_url,
           "RAKERONE_API_KEY": fake.api_key if api_key == "fake" else api_key}
    argv = ["--timeout", "1", *command, *words] + (["--input", "-"] if command[0] == "api" else [])

    result = run_cli(env, *argv, stdin=body)

    printed = result.stdout + result.stderr
    assert result.returncode in (0, 1, 2, 3, 4, 5, 6, 74, 124, 130), printed
    assert fake.api_key not in printed


# -- README tells the truth ----------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("status", [500, 502, 503, 504, 520, 521, 522, 523, 524])
def test_every_transient_5xx_is_retried(fake, status):
    fake.fail_next_requests(1, status=status)

    with rakerone.Client(fake.api_key, base_url=fake.base_url) as client:
        assert client.get_run(PROJECT, RUN).id == RUN

    assert len(fake.requests_seen) == 2


@pytest.mark.parametrize("status", [400, 405, 426])
def test_wait_for_run_polls_when_a_proxy_refuses_the_upgrade(fake, rakerone_client, clock, status):
    fake.reject_next_connections(1000, status=status)  # a proxy that does not pass WebSockets
    clock.then = lambda seconds: fake.update_run(PROJECT, RUN, status="completed")  # done by the next poll

    run = rakerone_client.wait_for_run(PROJECT, RUN, timeout=10)

    assert run.status == "completed"
    assert len(clock.sleeps) == 1


@pytest.mark.parametrize("event_id, as_text", [(7, "7"), (1.5, "1.5"), (True, "true")])
def test_numeric_event_ids_are_deduplicated_by_their_json_text(fake, rakerone_client, event_id, as_text):
    fake.emit_run_event(PROJECT, RUN, {"type": "step", "id": event_id})
    events = rakerone_client.iter_run_events(PROJECT, RUN)
    first = next(events)
    fake.drop_streams()  # the history, e1 included, is replayed on the next connection
    fake.emit_run_event(PROJECT, RUN, {"type": "step", "id": "after"})
    fake.finish_run_stream(PROJECT, RUN)

    assert first.id == as_text
    assert [event.id for event in events] == ["after"]


@pytest.mark.slow
def test_a_wait_cut_by_its_deadline_says_how_long_the_attempt_had(no_leaks):
    with MisbehavingAPI("silent") as api, rakerone.Client(API_KEY, base_url=api.base_url) as client:
        with pytest.raises(rakerone.WaitTimeoutError) as raised:
            client.wait_for_run(PROJECT, RUN, timeout=0.5)

    assert "30 s" not in str(raised.value.last_error)
    assert re.search(r"timed out after 0\.\d+ s", str(raised.value.last_error))  # the time it had, never "0 s"


def test_a_usage_error_is_one_line(cli_env):
    result = run_cli(cli_env, "run", "get", PROJECT)

    assert result.returncode == 2
    assert_one_line_error(result, "required", "--help")


def readme_blocks(language: str) -> list:
    with open(os.path.join(os.path.dirname(__file__), "README.md"), encoding="utf-8") as readme:
        return re.findall(rf"^```{language}\n(.*?)^```$", readme.read(), re.MULTILINE | re.DOTALL)


@pytest.mark.slow
def test_every_python_block_of_readme_runs_as_written_against_the_sample_fake(no_leaks):
    blocks = [block for block in readme_blocks("python") if "def test_" not in block]  # the fake's: see below
    server = subprocess.Popen([sys.executable, "-m", "rakerone_fake"], stdout=subprocess.PIPE, text=True)
    try:
        exports = dict(re.findall(r"^export (\w+)=(\S+)$", server.stdout.readline() + server.stdout.readline(),
                                  re.MULTILINE))
        env = dict(os.environ, **exports)
        results = [subprocess.run([sys.executable, "-c", block], env=env, capture_output=True, text=True, timeout=30)
                   for block in blocks]
    finally:
        server.terminate()
        server.wait(timeout=10)
        server.stdout.close()

    assert len(blocks) == 4 and set(exports) == {"RAKERONE_BASE_URL", "RAKERONE_API_KEY"}
    assert [(result.returncode, result.stderr) for result in results] == [(0, "")] * len(blocks)
    assert "could not" not in results[0].stdout and "no such run" not in results[0].stdout


def test_readme_shell_blocks_hold_only_the_install_demo_and_venv_commands_ci_runs():
    with open(os.path.join(os.path.dirname(__file__), ".ci", "run"), encoding="utf-8") as ci:
        run = ci.read()

    for block in readme_blocks("sh"):
        commands = [line.split("#")[0].strip() for line in block.splitlines() if line.split("#")[0].strip()]
        assert all(command.startswith(("pip install", "python -m rakerone_fake demo", "python3 -m venv"))
                   for command in commands)
    assert "README's commands" in run and "^python3 -m venv " in run


def test_a_replay_longer_than_the_dedupe_window_repeats_only_its_oldest_events(fake, rakerone_client, monkeypatch):
    monkeypatch.setattr(rakerone, "DEDUPE_WINDOW", 20)
    emit(fake, *range(22))
    events = rakerone_client.iter_run_events(PROJECT, RUN)
    first = [next(events).id for _ in range(22)]
    fake.drop_streams()  # the next connection replays all 22: the window holds the last 20
    emit(fake, 22)
    fake.finish_run_stream(PROJECT, RUN)

    assert first == [f"e{n}" for n in range(22)]
    assert [event.id for event in events] == ["e0", "e1", "e22"]
