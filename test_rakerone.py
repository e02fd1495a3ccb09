"""Tests for rakerone: HTTP with `responses`, streams and the CLI against the real fake."""

from __future__ import annotations

import datetime
import json
import logging
import socket
import traceback
import uuid

import pytest
import requests
import responses

import rakerone

API_KEY = "sk-live-0123456789abcdef"
BASE_URL = "https://api.example.test/api"
RUN_URL = f"{BASE_URL}/projects/proj_9876543210/playbook-runs/a1b2c3d4-e5f6-7890-ab12-cd34ef567890"

# The examples of ../shared/seeds/, verbatim.
SEED_RUN_RESPONSE = {
    "run": {
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
}
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


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    for name in ("RAKERONE_API_KEY", "RAKERONE_BASE_URL", "http_proxy", "https_proxy",
                 "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def sleeps():
    return []


@pytest.fixture
def client(sleeps):
    with rakerone.Client(API_KEY, base_url=BASE_URL) as client:
        client._sleep = sleeps.append
        yield client


@pytest.fixture
def mocked():
    with responses.RequestsMock() as mock:
        yield mock


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
    mocked.get(f"{BASE_URL}/projects/p/playbook-runs/r", json={"run": {}})

    with rakerone.Client(API_KEY, base_url=BASE_URL, session=session) as client:
        client.get_run("p", "r")

    assert "Authorization" not in session.headers
    assert session.adapters  # close() would have cleared them


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
    client._sleep = sleeps.append
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


def test_connection_refused_is_an_api_connection_error_after_retries(sleeps):
    client = rakerone.Client(API_KEY, base_url=f"http://127.0.0.1:{free_port()}/api", max_retries=2)
    client._sleep = sleeps.append

    with pytest.raises(rakerone.APIConnectionError) as raised:
        client.get_run("p", "r")

    assert type(raised.value) is rakerone.APIConnectionError
    assert "Connection refused" in str(raised.value) and "after 3 attempts" in str(raised.value)
    assert "object at 0x" not in str(raised.value)
    assert len(sleeps) == 2


def test_a_server_that_never_answers_is_an_api_timeout_error(sleeps):
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # accepts connections in the kernel, never answers
        port = silent.getsockname()[1]
        client = rakerone.Client(API_KEY, base_url=f"http://127.0.0.1:{port}/api", timeout=0.2, max_retries=1)
        client._sleep = sleeps.append

        with pytest.raises(rakerone.APITimeoutError, match="timed out after 0.2 s"):
            client.get_run("p", "r")
        client.close()

    assert len(sleeps) == 1


# -- Secrets ---------------------------------------------------------------------------


def test_api_key_never_appears_in_repr_errors_or_logs(mocked, caplog, sleeps):
    caplog.set_level(logging.DEBUG)
    client = rakerone.Client(API_KEY, base_url=BASE_URL, max_retries=1)
    client._sleep = sleeps.append
    echo = f"<html>Authorization: Bearer {API_KEY}</html>"
    mocked.get(f"{BASE_URL}/projects/p/playbook-runs/r", status=502, body=echo, content_type="text/html")

    with pytest.raises(rakerone.ServerError) as raised:
        client.get_run("p", "r")

    shown = [repr(client), repr(client._auth), str(raised.value), repr(raised.value), caplog.text,
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
