"""A synchronous Python client for the RakerOne API.

Blocking calls for scripts, cron jobs and legacy codebases: fetch a playbook run,
mint WebSocket tickets, and follow a run's (or a brief's) live events without
ever hanging, losing an event or printing a credential::

    import rakerone

    with rakerone.Client() as client:          # reads RAKERONE_API_KEY
        run = client.get_run("proj_1", "run_1")
        for event in client.iter_run_events("proj_1", "run_1"):
            print(event.type, event.data)

Read top-down: errors and their classifier, secrets, models, settings, deadlines,
the transport, streams, the client, waiting, shortcuts.
"""

from __future__ import annotations

__version__ = "0.1.0"

import base64
import collections
import contextlib
import contextvars
import datetime
import functools
import hashlib
import importlib.util
import io
import ipaddress
import json
import logging
import math
import os
import platform
import random
import re
import socket
import ssl
import struct
import threading
import time
import uuid
from collections.abc import Generator, Iterator, Mapping, Sequence
from typing import Any, Callable, Optional, Union, cast
from urllib.parse import quote, quote_plus, unquote, urlsplit, urlunsplit

import attrs
import requests
import requests.adapters
import requests.auth
import requests.structures
import urllib3
import urllib3.connection
import urllib3.exceptions
import urllib3.util
import urllib3.util.retry
import urllib3.util.ssl_

__all__ = [
    # client
    "Client",
    # shortcuts
    "get_run", "mint_run_ticket", "mint_brief_ticket", "wait_for_run", "request", "iter_run_events",
    "iter_brief_events",
    # models
    "PlaybookRun", "RunStep", "WsTicket", "Event",
    # errors
    "RakerOneError", "ConfigurationError", "APIError", "BadRequestError", "AuthenticationError",
    "PermissionDeniedError", "NotFoundError", "RateLimitError", "ServerError", "UnexpectedResponseError",
    "ResponseTooLargeError", "APIConnectionError", "APITimeoutError", "ProxyAuthenticationError",
    "StreamError", "StreamTimeoutError", "StreamDisconnectedError", "MessageTooLargeError", "WaitTimeoutError",
    # command line
    "main",
]

# -- Constants -------------------------------------------------------------------------

API_KEY_ENV = "RAKERONE_API_KEY"
BASE_URL_ENV = "RAKERONE_BASE_URL"
DEFAULT_BASE_URL = "https://app.raker.one/api"
DEFAULT_TIMEOUT = 30.0
DEFAULT_MAX_RETRIES = 2
#: The largest response body the client reads; a larger one is refused unread.
DEFAULT_MAX_RESPONSE_BYTES = 16 * 1024 * 1024
#: Connections kept open per host, so 16 threads sharing one client never churn them.
POOL_SIZE = 32
#: The longest any timeout or interval may be (a week): larger is surely a mistake.
MAX_SECONDS = 7 * 24 * 3600.0
#: How much of an error page is read for its message.
ERROR_PAGE_BYTES = 1024 * 1024
#: How many recently minted tickets each client remembers, to redact them anywhere.
TICKETS_REMEMBERED = 256

#: Statuses worth another try: the request may well succeed a moment later (52x: a CDN's).
RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504, 520, 521, 522, 523, 524})
#: Statuses that say the server did not act on the request, so even a POST may be resent.
NOT_ACTED_STATUSES = frozenset({429, 503})
#: Methods that may be sent twice without a second side effect.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
RETRY_BACKOFF_BASE = 0.5  # seconds; doubled per attempt, then fully jittered
RETRY_BACKOFF_CAP = 8.0
#: A longer Retry-After is not slept through by a call: its error is raised at once.
RETRY_AFTER_CAP = 60.0

#: Seconds a stream may go without a connection showing life before it gives up (max_outage).
DEFAULT_MAX_OUTAGE = 60.0
DEFAULT_PING_INTERVAL = 20.0
DEFAULT_PING_TIMEOUT = 10.0
RECONNECT_BACKOFF_BASE = 0.25  # seconds; doubled per failed attempt, capped, fully jittered
RECONNECT_BACKOFF_CAP = 10.0
#: A ping or pong from the server shows life once its connection has been open this long.
CONNECTION_WORKS_AFTER = 0.5
#: The largest message a stream accepts by default (max_message_bytes), fragments included.
DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
#: How many recent event ids a stream remembers to drop replayed events.
DEDUPE_WINDOW = 10_000
#: Longer ids are remembered as a 16-byte digest, so the window's memory is bounded.
DEDUPE_DIGEST_ABOVE = 64
#: How many bytes a stream reads from its socket at a time (see _read_ahead_websocket_class).
READ_AHEAD_BYTES = 256 * 1024
#: The most the answer to a WebSocket upgrade may hold (as http.client allows a header block).
UPGRADE_ANSWER_BYTES, UPGRADE_ANSWER_LINES = 64 * 1024, 102
#: How long closing a stream waits for the server to answer our close frame.
CLOSE_TIMEOUT = 1.0
#: Close codes after which a stream reconnects (besides a dropped connection).
RECONNECT_CLOSE_CODES = frozenset({1001, 1005, 1006, 1011, 1012, 1013, 1014})
#: Close codes that mean "not allowed", mapped to the HTTP status they stand for.
CLOSE_CODE_STATUS = {1008: 403, 4401: 401, 4403: 403, 4404: 404}

#: Run statuses (lower case, ``-``/space as ``_``) that end a run; the vocabulary is
#: not documented, so both lists are generous.
SUCCESS_STATUSES = frozenset({"completed", "complete", "succeeded", "success", "successful", "done"})
FAILURE_STATUSES = frozenset({"failed", "failure", "error", "errored", "cancelled", "canceled", "timed_out", "timeout",
                              "aborted", "rejected", "expired", "terminated", "killed", "skipped_all"})

logger = logging.getLogger("rakerone")

# -- Errors and the one classifier -----------------------------------------------------


class RakerOneError(Exception):
    """Base class of every error this module raises.

    ``retryable`` says whether the same call may well succeed later (a network
    failure, a timeout, 408, 429, 5xx); ``wait_for_run`` waits those out.
    """

    retryable = False


class ConfigurationError(RakerOneError, ValueError):
    """A setting or argument the client cannot use; raised before any network traffic."""


class APIError(RakerOneError):
    """The API answered with an error status (or with a body we cannot read).

    ``status_code``; ``code`` and ``issues`` (``ErrorResponse.error`` and ``.issues``);
    ``request_id``; ``retry_after`` (seconds, from ``Retry-After``); ``body`` (the
    decoded JSON, redacted, or None); ``response`` (read, its request without the key).
    """

    def __init__(self, message: str, *, status_code: Optional[int] = None, code: Optional[str] = None,
                 issues: tuple[Any, ...] = (), request_id: Optional[str] = None,
                 response: Optional[requests.Response] = None, body: Any = None,
                 retry_after: Optional[float] = None) -> None:
        super().__init__(message)
        self.status_code, self.code, self.issues, self.request_id = status_code, code, issues, request_id
        self.response, self.body, self.retry_after = response, body, retry_after


class BadRequestError(APIError):
    """HTTP 400: the request was invalid; see ``issues``."""


class AuthenticationError(APIError):
    """HTTP 401 (or close 4401): the API key or ticket was refused."""


class PermissionDeniedError(APIError):
    """HTTP 403 (or close 1008/4403): the key may not do this."""


class NotFoundError(APIError):
    """HTTP 404: no such project, run or brief."""


class RateLimitError(APIError):
    """HTTP 429: too many requests; ``retry_after`` says how long to wait, if known."""


class ServerError(APIError):
    """HTTP 5xx: the API failed; worth retrying later."""


class UnexpectedResponseError(APIError):
    """A success status with a body that is not the documented shape."""


class ResponseTooLargeError(UnexpectedResponseError):
    """The response body was larger than the client's ``max_response_bytes``."""


class APIConnectionError(RakerOneError):
    """The API could not be reached (after retries)."""


class APITimeoutError(APIConnectionError):
    """The API did not answer in time (after retries)."""


class ProxyAuthenticationError(RakerOneError):
    """The proxy refused to carry the request (HTTP 407); check the proxy's credentials."""


class StreamError(RakerOneError):
    """A live event stream failed: unreadable frame, or reconnects exhausted."""


class StreamTimeoutError(StreamError):
    """No event arrived within the stream's ``idle_timeout`` (or its deadline passed)."""


class StreamDisconnectedError(StreamError):
    """The stream was lost and could not be restored within its ``max_outage``."""

    retryable = True


class MessageTooLargeError(StreamError):
    """The server sent a message over ``max_message_bytes``; it was refused unread (close 1009)."""


class WaitTimeoutError(RakerOneError):
    """``wait_for_run`` reached its deadline before the run finished: ``run`` is the last
    state seen (None if the API never answered), ``last_error`` the last failure, if any."""

    def __init__(self, message: str, run: Optional[PlaybookRun] = None,
                 last_error: Optional[RakerOneError] = None) -> None:
        super().__init__(message)
        self.run, self.last_error = run, last_error


#: Status -> (our error class, what the message advises).
_STATUS_ERRORS: dict[int, tuple[type[APIError], Optional[str]]] = {
    400: (BadRequestError, None),
    401: (AuthenticationError, f"check that {API_KEY_ENV} (or api_key=) holds a valid RakerOne API key"),
    403: (PermissionDeniedError, "the API key is valid but may not access this project"),
    404: (NotFoundError, "check the ids and the base URL"),
    429: (RateLimitError, "the API is rate limiting this key; slow down"),
}


def _error_class(status_code: int) -> type[APIError]:
    return ServerError if status_code >= 500 else _STATUS_ERRORS.get(status_code, (APIError, None))[0]


#: The classifier's verdicts: how a failed call may be tried again.
_FINAL = "final"  # never: another try would fail the same way
_IF_SAFE = "if safe to repeat"  # the server may have acted: only an idempotent call is resent
_ALWAYS = "always"  # the server cannot have acted on it


@attrs.frozen
class _Answer:
    """An error answer (HTTP status >= 300, or a refused upgrade), its page redacted."""

    status: int
    headers: Mapping[str, str]
    text: str
    response: Optional[requests.Response] = None


@attrs.frozen
class _Closed:
    """A stream's close frame with a code other than 1000."""

    code: int
    reason: str


class _BadBody(Exception):
    """Internal: a body we will not use ("too large", "compressed", "truncated", "unreadable")."""

    def __init__(self, problem: str, detail: str, content: bytes = b"") -> None:
        super().__init__(detail)
        self.problem, self.content = problem, content


class _Cut(Exception):
    """Internal: an attempt cut at its "deadline", "closed" by close(), or not begun ("no time")."""

    def __init__(self, why: str, seconds: Optional[float] = None) -> None:
        super().__init__(why)
        self.why, self.seconds = why, seconds  # seconds: how long the attempt had


def _classify(failure: Any, what: str, secrets: _Secrets, seconds: float,
              stream: bool = False) -> tuple[RakerOneError, str]:
    """The one place a failure (an _Answer, _Closed, _BadBody, _Cut, our error, or what a
    dependency raised) becomes (our error, how it may be retried): callers act on nothing else."""
    if isinstance(failure, RakerOneError):  # ours already (a setting, a refused message size)
        error, kind = failure, _FINAL
    elif isinstance(failure, _Answer) and failure.status == 407:
        error, kind = _proxy_refused(what, "HTTP 407"), _FINAL
    elif isinstance(failure, _Answer):
        status, error = failure.status, _answer_error(failure, what, secrets)
        kind = _ALWAYS if status in NOT_ACTED_STATUSES else _IF_SAFE if status in RETRYABLE_STATUSES else _FINAL
    elif isinstance(failure, _Closed):
        error, kind = _close_error(failure)
    elif isinstance(failure, _BadBody):
        detail = f"{what}: {failure}"
        if failure.problem in ("too large", "compressed"):
            error_class = ResponseTooLargeError if failure.problem == "too large" else UnexpectedResponseError
            error, kind = error_class(detail), _FINAL
        elif failure.problem == "truncated":
            error, kind = APIConnectionError(detail), _IF_SAFE
        else:
            error, kind = UnexpectedResponseError(f"{detail}: {secrets.excerpt(failure.content)!r}"), _IF_SAFE
    else:
        error, kind = _network_error(failure, what, secrets, seconds, stream)
    error.retryable = kind != _FINAL
    return error, kind


def _network_error(failure: BaseException, what: str, secrets: _Secrets, seconds: float,
                   stream: bool) -> tuple[RakerOneError, str]:
    """A failure to connect, send or read (a _Cut is the watchdog's), and its verdict."""
    lost = StreamDisconnectedError if stream else APIConnectionError
    if isinstance(failure, _Cut):
        seconds = failure.seconds or seconds
        seconds = round(seconds, 1) or float(f"{seconds:.1g}")  # 30, 1.5, 0.04: never "0 s"
        if failure.why != "deadline":
            return lost(f"{what}: the client was closed during the call") if failure.why == "closed" else \
                APITimeoutError(f"{what}: no time left before the deadline"), _FINAL
        if stream:
            return lost(f"{what}: the WebSocket handshake took longer than its {seconds:g} s timeout"), _IF_SAFE
        return APITimeoutError(f"{what} timed out after {seconds:g} s (the limit for connecting, sending "
                               "and reading the whole answer)"), _IF_SAFE
    root, reason = _root_cause(failure), secrets.redact(_reason(failure))
    if isinstance(failure, (requests.exceptions.ProxyError, OSError)) and re.search(r"\b407\b", reason):
        return _proxy_refused(what, reason), _FINAL
    if isinstance(failure, requests.exceptions.SSLError) or (
            isinstance(root, ssl.SSLError) and not isinstance(root, (ssl.SSLEOFError, ssl.SSLZeroReturnError))):
        detail = root.verify_message if isinstance(root, ssl.SSLCertVerificationError) else reason
        return (StreamError if stream else APIConnectionError)(
            f"{what}: TLS failed ({detail}); check verify= and the base URL"), _FINAL
    if isinstance(failure, ValueError) and not isinstance(failure, requests.RequestException):
        return StreamError(f"{what}: cannot use the stream's URL ({reason})"), _FINAL  # websocket-client's word
    if isinstance(root, (urllib3.exceptions.NewConnectionError, ConnectionRefusedError)) or isinstance(
            failure, requests.exceptions.ConnectTimeout):  # nothing was sent
        return lost(f"{what}: could not {'connect' if stream else 'reach the server'} ({reason})"), _ALWAYS
    if isinstance(failure, requests.exceptions.Timeout) or isinstance(
            root, (socket.timeout, urllib3.exceptions.ReadTimeoutError)):
        return (lost if stream else APITimeoutError)(f"{what} timed out ({reason})"), _IF_SAFE
    return lost(f"{what}: the connection failed ({reason})"), _IF_SAFE


def _proxy_refused(what: str, reason: str) -> ProxyAuthenticationError:
    return ProxyAuthenticationError(f"{what}: the proxy refused to carry the request ({reason}); check "
                                    "the proxy's credentials (in https_proxy, or the session's proxies)")


def _close_error(closed: _Closed) -> tuple[RakerOneError, str]:
    """A close frame's error: restarts reconnect; "not allowed" codes read as HTTP statuses."""
    described = f"server closed the stream with {closed.code}" + (f" ({closed.reason})" if closed.reason else "")
    status = CLOSE_CODE_STATUS.get(closed.code)
    if status is None and 4000 <= closed.code < 5000:
        status = closed.code - 4000  # application codes read as 4000 + an HTTP status
    if closed.code in RECONNECT_CLOSE_CODES or status in RETRYABLE_STATUSES:
        return StreamDisconnectedError(described), _ALWAYS
    if status is not None and 400 <= status < 600:
        return _error_class(status)(described, status_code=status), _FINAL
    return StreamError(described), _FINAL


def _answer_error(answer: _Answer, what: str, secrets: _Secrets) -> APIError:
    """Our error for an error answer (HTTP, or a WebSocket upgrade), redacted whole."""
    status, headers, text = answer.status, answer.headers, answer.text
    body = None
    with contextlib.suppress(ValueError, RecursionError):
        body = json.loads(text) if text.strip() else None
    fields = body if isinstance(body, dict) else {}
    code, issues = _optional_str(fields.get("error")), fields.get("issues")
    issues = tuple(issues) if isinstance(issues, list) else ()
    detail, retry_after = fields.get("message") or fields.get("detail"), _retry_after_seconds(headers)
    request_id = headers.get("X-Request-Id") or headers.get("Request-Id")
    parts = [f"{what} failed with HTTP {status}" + (f" ({code})" if code else ""),
             secrets.excerpt(detail, 300) if isinstance(detail, str) else "",
             "issues: " + secrets.excerpt(json.dumps(issues, default=str), 500) if issues else "",
             f"the response was not JSON ({headers.get('Content-Type', 'unknown type')}): "
             f"{secrets.excerpt(text)!r}" if body is None and text.strip() else "",
             f"retry after {retry_after:.0f} s" if status == 429 and retry_after is not None else ""]
    if status >= 500:
        parts.append("the RakerOne API had a problem; try again later")
    elif 300 <= status < 400:
        location = secrets.excerpt(headers.get("Location", "elsewhere"))
        parts.append(f"the API redirected to {location}, not followed; check the base URL")
    else:
        parts.append(_STATUS_ERRORS.get(status, (APIError, ""))[1] or "")
    parts.append(f"request id {secrets.excerpt(request_id, 100)}" if request_id else "")
    return _error_class(status)(
        secrets.redact("; ".join(filter(None, parts))), status_code=status, code=code, issues=issues,
        request_id=request_id, response=answer.response, body=body, retry_after=retry_after)


def _retry_after_seconds(headers: Mapping[str, str]) -> Optional[float]:
    """``Retry-After`` as seconds from now (a number or an HTTP date), as urllib3 reads it."""
    value = headers.get("Retry-After")
    try:
        seconds = float(value or "nan")  # urllib3 takes whole seconds only; "0.25" is common enough
    except ValueError:
        with contextlib.suppress(urllib3.exceptions.HTTPError, ValueError, TypeError, OverflowError):
            return float(urllib3.util.retry.Retry().parse_retry_after(value or ""))
        return None
    return max(0.0, seconds) if seconds == seconds else None  # NaN (or nothing) is no answer


def _root_cause(exc: BaseException) -> BaseException:
    """The innermost exception of a requests/urllib3 failure (they nest in args and .reason)."""
    while True:
        inner = exc.args[0] if exc.args and isinstance(exc.args[0], BaseException) else None
        inner = getattr(exc, "reason", None) if inner is None else inner
        if not isinstance(inner, BaseException) or inner is exc:
            return exc
        exc = inner


def _reason(exc: BaseException) -> str:
    """A short reason for a network failure, without object reprs."""
    reason: Any = exc
    while reason.args and isinstance(reason.args[0], BaseException):
        reason = reason.args[0]
    reason = getattr(reason, "reason", reason)
    text = re.sub(r"<[^>]*object at 0x[0-9a-f]+>:?\s*", "", str(reason))  # urllib3 1.26's
    text = re.sub(r"\b\w*HTTPS?Connection\(host=[^)]*\):\s*", "", text)  # urllib3 2's
    return text[:300] or type(reason).__name__


# -- Secrets ---------------------------------------------------------------------------

_TICKET_IN_URL = re.compile(r"(ticket=)[^&#\s'\"]+", re.IGNORECASE)
_BEARER_TOKEN = re.compile(r"(Bearer\s+)[^\s'\",;]+", re.IGNORECASE)


def _secret_forms(secret: str) -> frozenset[str]:
    """Every form a secret travels in: raw, percent-encoded (three ways), JSON-escaped (two),
    base64 (alone, and Basic auth's ``secret:`` with and without ``Basic``), HTML character
    references (two)."""
    raw = secret.encode("utf-8", "surrogatepass")
    basic = base64.b64encode(raw + b":").decode().rstrip("=")
    return frozenset({
        secret, quote(secret, safe=""), quote(secret), quote_plus(secret), json.dumps(secret)[1:-1],
        "".join(f"%{byte:02x}" for byte in raw), "".join(f"\\u{ord(char):04x}" for char in secret),
        base64.b64encode(raw).decode().rstrip("="), basic, "Basic " + basic,
        "".join(f"&#{ord(char)};" for char in secret), "".join(f"&#x{ord(char):x};" for char in secret)})


class _Secrets:
    """The key and recent tickets, hidden in every form (and any bearer token or ``ticket=``)
    in each text we quote; the key is kept apart, so no number of tickets can push it out."""

    def __init__(self, key: Optional[str]) -> None:
        self._key_forms = _secret_forms(key) if key else frozenset()
        self._tickets: collections.deque[frozenset[str]] = collections.deque(maxlen=TICKETS_REMEMBERED)
        self._forms: Optional[list[str]] = None  # longest first
        self._pattern: Optional[re.Pattern[str]] = None

    def add_ticket(self, ticket: str) -> None:
        self._tickets.append(_secret_forms(ticket))
        self._pattern = None

    def redact(self, text: str, cut: bool = False) -> str:
        """``text`` with every secret hidden (``cut``: also a secret's start at its very end)."""
        if self._pattern is None:
            self._forms = sorted(self._key_forms.union(*self._tickets), key=len, reverse=True)
            self._pattern = re.compile("|".join(map(re.escape, self._forms)) or r"(?!)", re.IGNORECASE)
        text = self._pattern.sub("***", text)
        if cut and self._forms:
            tail = text[-len(self._forms[0]):].lower()  # the longest form's length
            size = max((size for form in self._forms for size in range(len(form) - 1, 3, -1)
                        if tail.endswith(form[:size].lower())), default=0)
            text = text[:-size] + "***" if size else text
        return _TICKET_IN_URL.sub(r"\1***", _BEARER_TOKEN.sub(r"\1***", text))

    def excerpt(self, content: Union[bytes, str], limit: int = 200) -> str:
        """The start of a server's text on one line, redacted whole before it is cut."""
        if isinstance(content, (bytes, bytearray)):
            content = bytes(content).decode("utf-8", "replace")
        text = self.redact(" ".join(content.split()))
        return text[:limit] + ("..." if len(text) > limit else "")

    def request(self, request: Optional[requests.PreparedRequest]) -> Optional[requests.PreparedRequest]:
        """A copy of a request safe to keep: no key in its headers, no secret in its URL."""
        if request is None:
            return None
        kept = request.copy()
        if "Authorization" in kept.headers:
            kept.headers["Authorization"] = "Bearer ***"
        kept.url = self.redact(kept.url or "")
        return kept


# -- Models ----------------------------------------------------------------------------

_FRACTION = re.compile(r"\.(\d+)")


def _parse_timestamp(value: Any) -> Optional[datetime.datetime]:
    """An ISO-8601 timestamp as an aware datetime (UTC if no offset), or None; normalises
    ``Z`` and fractions other than 3 or 6 digits, which Python 3.9 does not read."""
    if not isinstance(value, str):
        return None
    text = value.strip()
    text = text[:-1] + "+00:00" if text[-1:] in ("Z", "z") else text
    for attempt in (text, _FRACTION.sub(lambda m: "." + m.group(1)[:6].ljust(6, "0"), text, count=1)):
        with contextlib.suppress(ValueError):
            parsed = datetime.datetime.fromisoformat(attempt)
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=datetime.timezone.utc)
    return None


def _optional_str(value: Any) -> Optional[str]:
    """An id-like value as str: strings as they are, integers written out."""
    if isinstance(value, str):
        return value
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else None


class _WrongShape(TypeError):
    """Internal: a server's JSON is not of the shape a model needs."""


def _require_mapping(data: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise _WrongShape(f"{what} must be a JSON object, not {type(data).__name__}")
    return data


def _is_finished(raw: Mapping[str, Any], status: Optional[str]) -> bool:
    """``finishedAt`` is set, or the status is in SUCCESS_STATUSES or FAILURE_STATUSES."""
    return raw.get("finishedAt") not in (None, "") or _normalise_status(status) in SUCCESS_STATUSES | FAILURE_STATUSES


def _normalise_status(status: Optional[str]) -> str:
    return re.sub(r"[\s-]+", "_", (status or "").strip().lower())


@attrs.frozen
class RunStep:
    """One step of a playbook run; the server's object is kept whole in ``raw``."""

    step_id: Optional[str] = None
    name: Optional[str] = None
    status: Optional[str] = None
    started_at: Optional[datetime.datetime] = None
    finished_at: Optional[datetime.datetime] = None
    raw: dict[str, Any] = attrs.field(factory=dict, repr=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunStep:
        """Build a step from its JSON object; unknown fields stay in ``raw``."""
        data = _require_mapping(data, "a run step")
        return cls(step_id=_optional_str(data.get("stepId", data.get("id"))), name=_optional_str(data.get("name")),
                   status=_optional_str(data.get("status")), started_at=_parse_timestamp(data.get("startedAt")),
                   finished_at=_parse_timestamp(data.get("finishedAt")), raw=dict(data))

    @property
    def is_terminal(self) -> bool:
        """Whether the step has finished, by the rule of ``PlaybookRun.is_terminal``."""
        return _is_finished(self.raw, self.status)


@attrs.frozen
class PlaybookRun:
    """A playbook run. Every field is optional; the server's object is ``raw``.

    ``is_terminal`` once ``finishedAt`` is set or the status (case-insensitive, ``-`` and
    spaces read as ``_``) is in ``SUCCESS_STATUSES`` or ``FAILURE_STATUSES``; ``succeeded``
    only for a status in ``SUCCESS_STATUSES`` (an unknown one never counts as success).
    """

    id: Optional[str] = None
    project_id: Optional[str] = None
    status: Optional[str] = None
    started_at: Optional[datetime.datetime] = None
    finished_at: Optional[datetime.datetime] = None
    triggered_by: Optional[str] = None
    steps: tuple[RunStep, ...] = ()
    metadata: dict[str, Any] = attrs.field(factory=dict)
    raw: dict[str, Any] = attrs.field(factory=dict, repr=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PlaybookRun:
        """Build a run from its JSON object (the ``run`` member of the response)."""
        data = _require_mapping(data, "a playbook run")
        steps, metadata = data.get("steps"), data.get("metadata")
        return cls(
            id=_optional_str(data.get("id")), project_id=_optional_str(data.get("projectId")),
            status=_optional_str(data.get("status")), started_at=_parse_timestamp(data.get("startedAt")),
            finished_at=_parse_timestamp(data.get("finishedAt")), triggered_by=_optional_str(data.get("triggeredBy")),
            steps=tuple(RunStep.from_dict(step) for step in (steps if isinstance(steps, list) else ())
                        if isinstance(step, Mapping)),
            metadata=dict(metadata) if isinstance(metadata, Mapping) else {}, raw=dict(data))

    @property
    def is_terminal(self) -> bool:
        """Whether the run has finished, well or not."""
        return _is_finished(self.raw, self.status)

    @property
    def succeeded(self) -> bool:
        """Whether the run finished well (its status is a known success)."""
        return _normalise_status(self.status) in SUCCESS_STATUSES


@attrs.frozen
class WsTicket:
    """A short-lived WebSocket ticket. Its ``repr`` never shows the ticket."""

    ticket: str = attrs.field(repr=False)
    expires_at: Optional[datetime.datetime] = None
    expires_in_seconds: Optional[float] = None
    ws_url: Optional[str] = attrs.field(default=None, repr=False)
    raw: dict[str, Any] = attrs.field(factory=dict, repr=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WsTicket:
        """Build a ticket from the ``ws-ticket`` response; ``ticket`` is required."""
        data = _require_mapping(data, "a ws-ticket response")
        ticket, ws_url = data.get("ticket"), data.get("wsUrl")
        if not isinstance(ticket, str) or not ticket:
            raise _WrongShape("a ws-ticket response must carry a non-empty 'ticket' string")
        seconds = data.get("expiresInSeconds")
        seconds = float(seconds) if isinstance(seconds, (int, float)) and not isinstance(seconds, bool) else None
        return cls(ticket=ticket, expires_at=_parse_timestamp(data.get("expiresAt")), expires_in_seconds=seconds,
                   ws_url=ws_url if isinstance(ws_url, str) and ws_url else None, raw=dict(data))


@attrs.frozen
class Event:
    """One message from a live stream; ``raw`` is the decoded message, untouched (the format
    is not documented). ``type`` is from ``type`` or ``event``, ``id`` from ``id`` or
    ``eventId`` (as str), ``data`` the ``data`` or ``payload`` member, else the whole message.
    """

    type: Optional[str]
    id: Optional[str]
    data: Any
    raw: Any = attrs.field(repr=False)
    received_at: datetime.datetime

    @classmethod
    def from_message(cls, message: Any, received_at: datetime.datetime) -> Event:
        """Build an event from a decoded JSON message (any JSON value)."""
        if not isinstance(message, dict):
            return cls(type=None, id=None, data=message, raw=message, received_at=received_at)
        # On every frame of a stream: plain lookups, helpers only for unusual values.
        event_type = message.get("type")
        if event_type is None:
            event_type = message.get("event")
        event_id = message.get("id")
        if event_id is None:
            event_id = message.get("eventId")
        data = message["data"] if "data" in message else message["payload"] if "payload" in message else message
        if type(event_id) is not str:  # not a string: its JSON text (7, 1.5, true); None for no id
            event_id = json.dumps(event_id) if isinstance(event_id, (int, float)) else None
        return cls(type=event_type if type(event_type) is str else _optional_str(event_type), id=event_id,
                   data=data, raw=message, received_at=received_at)


# -- Settings and validation -----------------------------------------------------------

Timeout = Union[float, tuple[float, float]]
#: An id as the API takes it: a string, or an int or UUID written out.
Id = Union[str, int, uuid.UUID]
#: A query: a mapping, or pairs (a name may repeat: ``[("status", "a"), ("status", "b")]``).
Params = Union[Mapping[str, Any], Sequence[tuple[str, Any]], None]


def _checked_number(name: str, value: Any, *, whole: bool = False, zero: bool = False,
                    seconds: bool = True) -> Any:
    """The one check of every number a caller gives: an int or float (never a bool), > 0
    (>= 0 with ``zero``), ``whole`` where it counts things, at most a week for ``seconds``."""
    if (isinstance(value, bool) or not isinstance(value, int if whole else (int, float))
            or not (value >= 0 if zero else value > 0) or not (value <= MAX_SECONDS or not seconds)
            or not math.isfinite(value)):
        what = "a whole number" if whole else "a number of seconds" if seconds else "a number"
        raise ConfigurationError(f"{name} must be {what} {'>= 0' if zero else '> 0'}"
                                 f"{', at most a week' if seconds else ''}, not {value!r}")
    return value if whole else float(value)


def _check_timeout(timeout: Any) -> Timeout:
    if not isinstance(timeout, tuple):
        return cast(float, _checked_number("timeout", timeout))
    if len(timeout) != 2:
        raise ConfigurationError(f"timeout must be seconds or (connect, read), not {timeout!r}")
    return _checked_number("connect timeout", timeout[0]), _checked_number("read timeout", timeout[1])


_VISIBLE_ASCII = re.compile(r"[\x21-\x7e]+")


def _check_api_key(api_key: Any) -> str:
    """The key as given, or a ConfigurationError that explains (and never quotes) it."""
    if not isinstance(api_key, str) or not api_key.strip():
        raise ConfigurationError(f"no RakerOne API key: set the {API_KEY_ENV} environment variable "
                                 "or pass api_key= to rakerone.Client")
    for position, char in enumerate(api_key, 1):
        if not _VISIBLE_ASCII.fullmatch(char):
            raise ConfigurationError(
                f"the API key has an unusable character at position {position} (U+{ord(char):04X}): a key "
                "is visible ASCII only, without spaces or line breaks; check how it was copied or set")
    return api_key


def _is_loopback(host: Optional[str]) -> bool:
    """Whether ``host`` is ``localhost`` or a loopback literal (``foo.localhost`` goes to DNS)."""
    if host is not None and host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


def _check_base_url(base_url: Any, allow_insecure_http: bool) -> str:
    """Validate the API root URL and return it without a trailing slash."""
    if not isinstance(base_url, str) or not base_url.strip():
        raise ConfigurationError(f"base_url must be a URL such as {DEFAULT_BASE_URL!r}")
    try:
        parts = urlsplit(base_url.strip())
        host, _ = parts.hostname, parts.port  # the port raises ValueError when bad
    except ValueError as exc:
        raise ConfigurationError(f"base_url {base_url!r} is not a valid URL: {exc}") from None
    try:  # requests' own check (control characters), and the name as a resolver takes it
        requests.PreparedRequest().prepare_url(base_url.strip(), None)
        (host or "").encode("idna")
        if re.search(r"[\s\x00-\x1f\x7f]", base_url.strip()):
            raise ValueError("it holds a space or a control character")
    except (requests.RequestException, UnicodeError, ValueError) as exc:
        raise ConfigurationError(f"base_url {_Secrets(None).redact(base_url)!r} is not a usable URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not host:
        raise ConfigurationError(f"base_url must be an http(s) URL with a host, such as {DEFAULT_BASE_URL!r}; "
                                 f"got {_Secrets(None).redact(base_url)!r}")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ConfigurationError("base_url must not carry credentials, a query or a fragment; "
                                 f"pass the key as api_key= or {API_KEY_ENV}")
    if parts.scheme == "http" and not _is_loopback(host) and not allow_insecure_http:
        raise ConfigurationError(f"refusing plain-http base_url to {host}: the API key would cross the network "
                                 "in clear; use https, or pass allow_insecure_http=True if you really mean it")
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


@attrs.frozen
class _Settings:
    """A client's settings, checked, with the environment's defaults."""

    api_key: str = attrs.field(repr=False)
    base_url: str
    timeout: Timeout
    max_retries: int
    verify: Union[bool, str, None]
    user_agent: str
    allow_insecure_http: bool
    max_response_bytes: int

    @classmethod
    def checked(cls, api_key: Any, base_url: Any, timeout: Any, max_retries: Any, verify: Any,
                user_agent: Any, allow_insecure_http: Any, max_response_bytes: Any) -> _Settings:
        if not (verify is None or isinstance(verify, bool) or (isinstance(verify, str) and os.path.exists(verify))):
            raise ConfigurationError(f"verify must be True, False or an existing CA bundle path, not {verify!r}")
        if user_agent is not None and (not isinstance(user_agent, str) or user_agent != user_agent.strip()
                                       or not re.fullmatch(r"[\x20-\x7e]+", user_agent)):
            raise ConfigurationError("user_agent must be printable ASCII on one line, without surrounding "
                                     f"spaces, such as 'my-app/1.2'; got {user_agent!r}")
        agent = " ".join(filter(None, [
            user_agent, f"rakerone-python/{__version__}",
            f"python/{platform.python_version()}", f"requests/{getattr(requests, '__version__', 'unknown')}"]))
        base_url = base_url if base_url is not None else os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL
        return cls(
            api_key=_check_api_key(api_key if api_key is not None else os.environ.get(API_KEY_ENV)),
            base_url=_check_base_url(base_url, bool(allow_insecure_http)), timeout=_check_timeout(timeout),
            max_retries=_checked_number("max_retries", max_retries, whole=True, zero=True, seconds=False),
            verify=verify, user_agent=agent, allow_insecure_http=bool(allow_insecure_http),
            max_response_bytes=_checked_number("max_response_bytes", max_response_bytes, whole=True, seconds=False))

    @property
    def attempt_seconds(self) -> float:
        """How long one attempt may take end to end: a (connect, read) pair's sum."""
        return sum(self.timeout) if isinstance(self.timeout, tuple) else self.timeout


@attrs.frozen
class _StreamSettings:
    """A stream's options, checked (``max_outage`` 0: never reconnect)."""

    ping_interval: float = DEFAULT_PING_INTERVAL
    ping_timeout: float = DEFAULT_PING_TIMEOUT
    idle_timeout: Optional[float] = None
    max_outage: float = DEFAULT_MAX_OUTAGE
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES

    @classmethod
    def checked(cls, max_outage: Any, max_message_bytes: Any, ping_interval: Any, ping_timeout: Any,
                idle_timeout: Any) -> _StreamSettings:
        return cls(
            max_outage=_checked_number("max_outage", max_outage, zero=True),
            max_message_bytes=_checked_number("max_message_bytes", max_message_bytes, whole=True, seconds=False),
            ping_interval=_checked_number("ping_interval", ping_interval),
            ping_timeout=_checked_number("ping_timeout", ping_timeout),
            idle_timeout=None if idle_timeout is None else _checked_number("idle_timeout", idle_timeout))


def _path_segment(name: str, value: Any) -> str:
    """Percent-encode an id as exactly one path segment ("../x" cannot climb)."""
    if isinstance(value, uuid.UUID) or (isinstance(value, int) and not isinstance(value, bool)):
        value = str(value)
    if not isinstance(value, str):
        raise ConfigurationError(f"{name} must be a str, int or UUID, not {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: bytes that were not UTF-8 on the command line
        raise ConfigurationError(f"{name} {value!r} is not valid text (UTF-8)") from None
    if not value.strip() or value in (".", ".."):
        raise ConfigurationError(f"{name} must not be empty" if not value.strip() else f"{name} {value!r} is not a valid id")
    return quote(value, safe="")


def _run_path(project_id: Any, run_id: Any) -> str:
    return f"/projects/{_path_segment('project_id', project_id)}/playbook-runs/{_path_segment('run_id', run_id)}"


def _brief_path(project_id: Any, brief_id: Any) -> str:
    return f"/projects/{_path_segment('project_id', project_id)}/briefs/{_path_segment('brief_id', brief_id)}"


_PATH_TEXT = re.compile(r"[A-Za-z0-9\-._~/!$&'()*+,;=:@%]*")


def _fill_path(template: Any, ids: tuple[Any, ...]) -> str:
    """An API path from a template: each ``{}`` is one id, encoded as one segment."""
    if not isinstance(template, str) or not template.startswith("/") or template.startswith("//"):
        raise ConfigurationError(
            f"path must be relative to the base URL, such as '/projects/{{}}/briefs'; got {template!r}")
    literals = template.split("{}")
    if len(literals) - 1 != len(ids):
        raise ConfigurationError(
            f"path {template!r} has {len(literals) - 1} '{{}}' placeholder(s) but {len(ids)} id(s) were given")
    if not all(_PATH_TEXT.fullmatch(literal) for literal in literals):
        raise ConfigurationError(f"path {template!r} may hold only URL path characters and '{{}}' placeholders; "
                                 "pass the query as params= and ids as arguments")
    segments = [_path_segment(f"id {number}", value) for number, value in enumerate(ids, 1)]
    path = literals[0] + "".join(segment + literal for segment, literal in zip(segments, literals[1:]))
    if any(unquote(segment) in (".", "..") for segment in path.split("/")):
        raise ConfigurationError(f"path {template!r} must not hold '.' or '..' segments")
    return path


def _check_json(body: Any) -> Any:
    """``body`` if requests can send it as JSON (no NaN or infinity), else ConfigurationError."""
    try:
        json.dumps(body, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise ConfigurationError(f"json= must be plain JSON data (no NaN, infinity or other objects): {exc}") from None
    return body


def _check_method(method: Any) -> str:
    if not isinstance(method, str) or not re.fullmatch(r"[A-Za-z]+", method):
        raise ConfigurationError(f"method must be an HTTP method such as 'GET' or 'POST', not {method!r}")
    return method.upper()


# -- Deadlines -------------------------------------------------------------------------
#
# Socket timeouts bound each read, not a whole answer: a server dripping a byte inside each
# read timeout would hold a call for hours. So the process's watchdog thread shuts down the
# socket of every attempt (an HTTP exchange, or opening a stream) still running at its
# deadline. Everything else about time is a _Deadline passed down, read through one clock.


class _Clock:
    """The time every budget, backoff and deadline reads (tests replace ``_clock``)."""

    now = staticmethod(time.monotonic)
    sleep = staticmethod(time.sleep)


_clock = _Clock()


@attrs.frozen
class _Deadline:
    """An instant on ``_clock`` by which work must end (``math.inf``: none)."""

    at: float = math.inf

    @classmethod
    def after(cls, seconds: Optional[float]) -> _Deadline:
        return cls(math.inf if seconds is None else _clock.now() + seconds)

    @classmethod
    def ambient(cls) -> _Deadline:
        """The deadline of the work this thread is doing (``wait_for_run``'s), else none."""
        return _ambient_deadline.get()

    def sooner(self, seconds: float) -> _Deadline:
        """This deadline, or ``seconds`` from now if that comes first."""
        return _Deadline(min(self.at, _clock.now() + seconds))

    def remaining(self) -> float:
        return max(0.0, self.at - _clock.now())

    def clamp(self, seconds: float) -> float:
        return min(seconds, self.remaining())

    @property
    def expired(self) -> bool:
        return _clock.now() >= self.at

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """Make this the ambient deadline of every call and stream made inside the block."""
        token = _ambient_deadline.set(_Deadline(min(self.at, _ambient_deadline.get().at)))
        try:
            yield
        finally:
            _ambient_deadline.reset(token)


_NO_DEADLINE = _Deadline()
_ambient_deadline = contextvars.ContextVar("rakerone_deadline", default=_NO_DEADLINE)


class _Attempt:
    """One watched piece of network work: ``sock`` as our connections report it, or else
    ``connection`` holding it (a WebSocket, or the urllib3 response of a session's adapter)."""

    __slots__ = ("deadline", "owner", "sock", "connection", "cut", "reused")

    def __init__(self, deadline: _Deadline, owner: object) -> None:
        self.deadline, self.owner = deadline, owner  # owner: the transport, whose close() cuts it
        self.sock: Optional[socket.socket] = None
        self.connection: Any = None
        self.cut: Optional[str] = None  # "deadline" or "closed", once cut
        self.reused = False  # sent on a pooled connection that had carried a request before

    def abort(self, why: str) -> None:
        """Unblock whatever is reading (a close alone would not)."""
        self.cut = why
        sock = self.sock if self.sock is not None else getattr(self.connection, "sock", None)
        with contextlib.suppress(OSError, ValueError, RuntimeError):  # already closed, or released
            if sock is not None:
                sock.shutdown(socket.SHUT_RDWR)
            elif callable(getattr(self.connection, "shutdown", None)):
                self.connection.shutdown()


class _Watchdog:
    """The process's one thread that cuts attempts still running at their deadline: started
    by the first, gone within 2 * IDLE_EXIT s of the last, built anew in a forked child."""

    IDLE_EXIT = 2.0

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._attempts: set[_Attempt] = set()
        self._running = False
        self._wake_at = math.inf

    def watch(self, attempt: _Attempt) -> None:
        """Watch ``attempt``; APIConnectionError if the thread cannot be started."""
        with self._condition:
            if not self._running:
                thread = threading.Thread(target=self._run, name="rakerone-watchdog", daemon=True)
                try:
                    thread.start()
                except RuntimeError as exc:  # a process or memory limit: the next call tries again
                    raise APIConnectionError(f"could not start the thread that enforces timeouts ({exc}); the "
                                             "call was not sent: is the process at its thread limit?") from None
                self._running = True
            self._attempts.add(attempt)
            if attempt.deadline.at < self._wake_at:
                self._condition.notify()

    def unwatch(self, attempt: _Attempt) -> None:
        with self._condition:
            self._attempts.discard(attempt)

    def cut_all(self, owner: object) -> None:
        """Cut every attempt of ``owner`` now (its client is being closed)."""
        with self._condition:
            for attempt in [a for a in self._attempts if a.owner is owner]:
                self._attempts.discard(attempt)
                attempt.abort("closed")

    def _run(self) -> None:
        with self._condition:
            idle_since = _clock.now()
            while True:
                now = _clock.now()
                for attempt in [a for a in self._attempts if a.deadline.at <= now]:
                    self._attempts.discard(attempt)
                    attempt.abort("deadline")
                if self._attempts:
                    idle_since = now
                elif now - idle_since >= self.IDLE_EXIT:
                    self._running, self._wake_at = False, math.inf
                    return
                # Awake at least every IDLE_EXIT seconds: the end of a call wakes no one, yet
                # the thread must notice it has nothing left to watch.
                self._wake_at = min(min((a.deadline.at for a in self._attempts), default=math.inf),
                                    now + self.IDLE_EXIT)
                self._condition.wait(max(self._wake_at - now, 0.001))


_watchdog = _Watchdog()
#: The fork generation (how many fork()s from the importing process) that pools and streams compare.
_forks = 0


def _after_fork() -> None:
    """A new watchdog (the parent's thread did not come along, and may have held its lock)."""
    global _forks, _watchdog
    _forks += 1
    _watchdog = _Watchdog()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


def _backoff(attempt: int, base: float, cap: float) -> float:
    """Exponential backoff with full jitter: a random wait up to base * 2**attempt."""
    return random.uniform(0, min(cap, base * 2 ** min(attempt, 32)))


# -- Transport -------------------------------------------------------------------------

#: The attempt the current thread is making, for our connections and pools to report to.
_current = threading.local()


class _ReportingConnectionMixin:
    """Tells the current attempt its socket: a new one before any tunnel or TLS (which could
    drip too), a pooled one each time it is reused (and that it is)."""

    _rakerone_used_sock: Optional[socket.socket] = None

    # urllib3's only point where a new socket exists before any tunnel or TLS: no public hook has it.
    def _new_conn(self) -> socket.socket:
        sock: socket.socket = super()._new_conn()  # type: ignore[misc]
        self._report(sock, reused=False)
        return sock

    def request(self, *args: Any, **kwargs: Any) -> Any:
        sock = self.sock  # type: ignore[attr-defined]
        if sock is not None:  # connected: by urllib3 just now (TLS), or by an earlier request
            self._report(sock, reused=sock is self._rakerone_used_sock)
        try:
            return super().request(*args, **kwargs)  # type: ignore[misc]
        finally:
            self._rakerone_used_sock = self.sock  # type: ignore[attr-defined]

    @staticmethod
    def _report(sock: socket.socket, reused: bool) -> None:
        attempt = getattr(_current, "attempt", None)
        if attempt is not None:
            attempt.sock, attempt.reused = sock, reused


class _WatchedPoolMixin:
    """Unwatches the attempt before its connection goes back to the pool, for the next user."""

    # urllib3 has no public hook for "this connection is released": only _put_conn sees it.
    def _put_conn(self, conn: Any) -> None:
        attempt = getattr(_current, "attempt", None)
        if attempt is not None:
            _watchdog.unwatch(attempt)
        super()._put_conn(conn)  # type: ignore[misc]


class _ReportingHTTPConnection(_ReportingConnectionMixin, urllib3.connection.HTTPConnection):
    pass


class _ReportingHTTPSConnection(_ReportingConnectionMixin, urllib3.connection.HTTPSConnection):
    pass


# urllib3 declares ConnectionCls as its connection protocol, which pyright compares
# member by member with our subclasses; they are urllib3's own classes, extended.
class _WatchedHTTPConnectionPool(_WatchedPoolMixin, urllib3.HTTPConnectionPool):
    ConnectionCls = _ReportingHTTPConnection  # pyright: ignore[reportAssignmentType]


class _WatchedHTTPSConnectionPool(_WatchedPoolMixin, urllib3.HTTPSConnectionPool):
    ConnectionCls = _ReportingHTTPSConnection  # pyright: ignore[reportAssignmentType]


_WATCHED_POOLS = {"http": _WatchedHTTPConnectionPool, "https": _WatchedHTTPSConnectionPool}


class _TransportAdapter(requests.adapters.HTTPAdapter):
    """The own session's adapter: pools for 16 threads, connections cut from their first byte
    (a session you pass keeps its adapters; there the deadline holds from the headers on)."""

    def __init__(self) -> None:
        super().__init__(pool_maxsize=POOL_SIZE)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _WATCHED_POOLS

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if not proxy.lower().startswith("socks"):
            manager.pool_classes_by_scheme = _WATCHED_POOLS
        return manager


class _BearerAuth(requests.auth.AuthBase):
    """Adds the key per request (a session passed in is never altered, ``~/.netrc`` cannot
    replace it); its repr hides it."""

    def __init__(self, api_key: str) -> None:
        self._header = f"Bearer {api_key}"

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = self._header
        return request

    def __repr__(self) -> str:
        return "<_BearerAuth ***>"


class _Redirected(Exception):
    """Internal: raised by a response hook, so requests never reads a 3xx body itself."""

    def __init__(self, response: requests.Response) -> None:
        super().__init__(response.status_code)
        self.response = response


def _stop_at_redirect(response: requests.Response, **_: Any) -> None:
    if 300 <= response.status_code < 400:
        raise _Redirected(response)


class _Failed(Exception):
    """Internal: a call or stream opening failed with ``error``; ``kind`` is the classifier's verdict."""

    def __init__(self, error: RakerOneError, kind: str, cause: Optional[BaseException] = None) -> None:
        super().__init__(str(error))
        self.error, self.kind, self.cause = error, kind, cause


def _as_http(url: str) -> str:
    """A ws(s) URL as the http(s) URL that proxies and TLS settings are chosen for."""
    return "http" + url[2:] if url[:3].lower() in ("ws:", "wss") else url


def _peer_closed(exc: requests.ConnectionError) -> bool:
    """Whether the server had closed the connection as we sent (no answer came)."""
    root = _root_cause(exc)  # urllib3's ProtocolError("Connection aborted.", cause)
    return any(isinstance(part, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError))
               for part in (root, *root.args))


def _is_framed(response: requests.Response) -> bool:
    """Whether the answer's end is marked (a length, or chunks): a cut cannot pass for it."""
    headers = response.headers
    return "Content-Length" in headers or "chunked" in headers.get("Transfer-Encoding", "").lower()


def _check_route(origin: str, route: Mapping[str, Any], allow_insecure_http: bool) -> None:
    """Refuse a missing CA bundle or certificate file, and cleartext through a distant proxy."""
    verify, cert = route["verify"], route["cert"]
    files = [("CA bundle (verify, or REQUESTS_CA_BUNDLE)", verify if isinstance(verify, str) else None)]
    if isinstance(cert, str):
        files.append(("client certificate (cert)", cert))
    elif isinstance(cert, (tuple, list)) and len(cert) == 2:
        files += [("client certificate (cert)", cert[0]), ("client key (cert)", cert[1])]
    for what, name in files:
        if name and not os.path.exists(name):
            raise ConfigurationError(f"the {what} {name!r} does not exist")
    proxy = requests.utils.select_proxy(origin, dict(route["proxies"])) or ""
    try:
        proxy_parts = urlsplit(proxy if not proxy or "://" in proxy else "http://" + proxy)
        _ = proxy_parts.port  # raises ValueError when bad
    except ValueError as exc:
        raise ConfigurationError(f"the proxy URL for {origin} is not usable ({exc})") from None
    if proxy_parts.scheme.startswith("socks") and importlib.util.find_spec("socks") is None:
        raise ConfigurationError(f"the proxy for {origin} is a SOCKS proxy, which needs PySocks: "
                                 "pip install 'requests[socks]'")
    proxy_host = proxy and proxy_parts.hostname
    if origin.startswith("http:") and proxy and not _is_loopback(proxy_host) and not allow_insecure_http:
        raise ConfigurationError(
            f"refusing to send credentials in clear to {urlsplit(origin).hostname} through the proxy at "
            f"{proxy_host}: use an https base URL, exempt the host with no_proxy, or pass "
            "allow_insecure_http=True if you really mean it")


class _Transport:
    """The only code touching requests, urllib3 and websocket-client: one session, one route
    for HTTP and streams, calls with retries and a body limit, sockets for streams. Every
    failure leaves as the classifier's verdict (_Failed)."""

    def __init__(self, settings: _Settings, session: Optional[requests.Session]) -> None:
        if session is not None and not isinstance(session, requests.Session):
            raise ConfigurationError(f"session must be a requests.Session, not {type(session).__name__}")
        self.settings = settings
        self.secrets = _Secrets(settings.api_key)
        self._auth = _BearerAuth(settings.api_key)
        self._headers = {"Accept": "application/json", "Accept-Encoding": "identity",
                         "User-Agent": settings.user_agent}
        self._owns_session = session is None
        if session is None:
            session = requests.Session()
            session.mount("https://", _TransportAdapter())
            session.mount("http://", _TransportAdapter())
        self._session = session
        self._generation = _forks
        self._routes: dict[tuple[Any, ...], dict[str, Any]] = {}
        self.route(settings.base_url)  # refuse an unusable route now

    def close(self) -> None:
        _watchdog.cut_all(self)
        if self._owns_session:
            self._session.close()

    def call(self, method: str, path: str, *, params: Params = None, body: Any = None,
             resend_unsafe: bool = False) -> Any:
        """Send one API request with retries; its decoded JSON body (None when empty)."""
        what, may_resend = f"{method} {path}", resend_unsafe or method in IDEMPOTENT_METHODS
        attempt = 0
        while True:
            try:
                return self._attempt(method, path, what, params, body, may_resend)
            except _Failed as failed:
                failure = failed
            delay = self._retry_delay(attempt, failure, may_resend)
            if delay is None:
                if attempt and isinstance(failure.error, APIConnectionError):
                    failure.error.args = (f"{failure.error} (after {attempt + 1} attempts)",)
                raise failure.error from failure.cause
            # The message, not the error: a handler keeping records would keep its response alive.
            logger.info("%s: %s; retry %d of %d in %.2f s", what, str(failure.error), attempt + 1,
                        self.settings.max_retries, delay)
            _clock.sleep(delay)
            attempt += 1

    def _retry_delay(self, attempt: int, failure: _Failed, may_resend: bool) -> Optional[float]:
        """How long to wait before the next attempt, or None to give up now."""
        if failure.kind == _FINAL or attempt >= self.settings.max_retries or (
                failure.kind == _IF_SAFE and not may_resend):
            return None
        retry_after = getattr(failure.error, "retry_after", None)
        if retry_after is not None and retry_after > RETRY_AFTER_CAP:
            return None
        delay: float = _backoff(attempt, RETRY_BACKOFF_BASE, RETRY_BACKOFF_CAP) if retry_after is None else retry_after
        return delay if delay < _Deadline.ambient().remaining() else None

    def _attempt(self, method: str, path: str, what: str, params: Params, body: Any, may_resend: bool) -> Any:
        """One exchange, watched end to end; its JSON. _Failed is built outside the except
        blocks, so no context carries a secret."""
        self._check_fork()
        deadline = _Deadline.ambient().sooner(self.settings.attempt_seconds)
        budget = deadline.at - _clock.now()
        if budget <= 0:
            raise self._failed(_Cut("no time"), what)
        prepared = self._session.prepare_request(requests.Request(  # your session's headers, cookies, hooks
            method, self.settings.base_url + path, headers=self._headers, auth=self._auth, params=params, json=body))
        prepared.hooks["response"].append(_stop_at_redirect)  # after the session's own hooks
        route, attempt = self.route(self.settings.base_url), _Attempt(deadline, self)
        failure: Optional[Exception] = None
        response: Optional[requests.Response] = None
        content, cut = b"", False
        _watchdog.watch(attempt)
        _current.attempt = attempt
        try:
            response = self._send(prepared, route, attempt, may_resend, what)
            if attempt.sock is None:  # a session's own adapter: cut through the answer (urllib3 2.3+)
                attempt.connection = response.raw  # or else through its socket
                if not hasattr(response.raw, "shutdown"):
                    attempt.sock = getattr(getattr(response.raw, "connection", None), "sock", None)
            content, cut = self._read_body(response, method)
        except (requests.RequestException, _BadBody) as exc:
            failure = exc
        finally:
            _current.attempt = None
            _watchdog.unwatch(attempt)
            if response is not None:
                response.close()
            if attempt.cut is not None and attempt.connection is not None and attempt.sock is not None:
                attempt.sock.close()  # a session's own adapter (urllib3 1.26) may keep a cut socket open
        if attempt.cut is not None and (failure is not None or response is None or not _is_framed(response)):
            failure = _Cut(attempt.cut, budget)  # the cut can read as the end of a body: whatever came, it is late
        if failure is not None or response is None:
            raise self._failed(failure, what)
        logger.debug("%s -> %s", what, response.status_code)
        if response.status_code >= 300:
            page = self.secrets.redact(content.decode("utf-8", "replace"), cut=cut)
            raise self._failed(_Answer(response.status_code, response.headers, page, self._scrubbed(response, page)),
                               what)
        return self._decode(response, content, what)

    def _failed(self, failure: Any, what: str, stream: bool = False) -> _Failed:
        error, kind = _classify(failure, what, self.secrets, self.settings.attempt_seconds, stream)
        if not isinstance(failure, requests.RequestException):
            return _Failed(error, kind)
        failure.request = self.secrets.request(cast(Optional[requests.PreparedRequest], failure.request))
        failure.response = None  # the exception is kept as the cause: nothing in it may hold the key
        return _Failed(error, kind, failure)

    def _send(self, prepared: requests.PreparedRequest, route: dict[str, Any], attempt: _Attempt,
              may_resend: bool, what: str) -> requests.Response:
        """Send as your session does, redirects off, body unread; resend at once (not counted
        as a retry) a repeatable request that met a pooled connection the server had closed."""
        for resending in (False, True):
            left, timeout = attempt.deadline.remaining(), self.settings.timeout
            try:
                return self._session.send(prepared, allow_redirects=False, stream=True, **route, timeout=(
                    (min(timeout[0], left), min(timeout[1], left)) if isinstance(timeout, tuple) else min(timeout, left)))
            except _Redirected as redirected:
                return redirected.response
            except requests.HTTPError as raised:  # a session hook's raise_for_status(): judged as any answer
                if raised.response is None:
                    raise
                return raised.response
            except requests.ConnectionError as exc:
                if resending or not (attempt.reused and may_resend and attempt.cut is None and _peer_closed(exc)):
                    raise
            logger.debug("%s: the server had closed the pooled connection; resending on a new one", what)
            _watchdog.watch(attempt)  # giving the closed connection back unwatched it
        raise AssertionError("unreachable")  # pragma: no cover

    def _read_body(self, response: requests.Response, method: str) -> tuple[bytes, bool]:
        """The body, refused unread when compressed or too large, and whether it was cut short
        (an error page is read only as far as its message needs, and not when compressed)."""
        status, limit = response.status_code, self.settings.max_response_bytes
        encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
        if method == "HEAD" or status in (204, 304) or (status >= 300 and encoding not in ("", "identity")):
            return b"", False  # no body; or a compressed error page, judged by its status (a proxy's gzip 503)
        if encoding not in ("", "identity"):
            raise _BadBody("compressed", f"answered HTTP {status} with a {encoding!r}-compressed body "
                           "although the client asked for none; refusing to decompress it")
        length = response.headers.get("Content-Length", "")
        too_large = f"the response {{}}, over the client's max_response_bytes of {limit:,}; refused unread"
        if length.isdigit() and int(length) > limit and status < 300:
            raise _BadBody("too large", too_large.format(f"announced {int(length):,} bytes"))
        limit = min(limit, ERROR_PAGE_BYTES) if status >= 300 else limit
        chunks: list[bytes] = []
        size = 0
        for chunk in response.iter_content(64 * 1024):
            size += len(chunk)
            if size > limit and status >= 300:
                return b"".join(chunks + [chunk])[:limit], True  # an excerpt is all a message needs
            if size > limit:
                raise _BadBody("too large", too_large.format(f"sent more than {limit:,} bytes"))
            chunks.append(chunk)
        content = b"".join(chunks)
        if length.isdigit() and len(content) < int(length) and status < 300:
            raise _BadBody("truncated", f"the connection closed after {len(content):,} of {int(length):,} bytes")
        return content, False

    def _decode(self, response: requests.Response, content: bytes, what: str) -> Any:
        if not content.strip():
            return None
        try:
            return json.loads(content)
        except (ValueError, RecursionError) as exc:
            problem = ("nested too deeply" if isinstance(exc, RecursionError)
                       else f"not JSON ({response.headers.get('Content-Type', 'unknown type')})")
        raise self._failed(_BadBody(
            "unreadable", f"answered HTTP {response.status_code} with a body that is {problem}", content), what)

    def _scrubbed(self, response: requests.Response, page: str) -> requests.Response:
        """The error answer as errors keep (and pickle) it: read, redacted, its request keyless."""
        kept = requests.Response()
        kept.status_code, kept.reason, kept.encoding = response.status_code, response.reason, "utf-8"
        kept.headers, kept.url = response.headers, self.secrets.redact(response.url or "")
        kept.raw = io.BytesIO(page.encode())
        kept.request = self.secrets.request(response.request)  # type: ignore[assignment]
        return kept

    def route(self, url: str) -> dict[str, Any]:
        """Proxies, TLS trust and certificate for a URL as requests merges session and
        environment (``verify=`` wins); cached, as scanning the environment is a third of a call."""
        session, verify = self._session, self.settings.verify
        origin = "/".join(_as_http(url).split("/", 3)[:3])
        key = (origin, session.trust_env, tuple(sorted(session.proxies.items())), session.verify, session.cert)
        route = self._routes.get(key)
        if route is None:
            merged = session.merge_environment_settings(origin, {}, None, verify, None)
            route = {"proxies": merged["proxies"], "verify": merged["verify"] if verify is None else verify,
                     "cert": merged["cert"]}
            _check_route(origin, route, self.settings.allow_insecure_http)
            if len(self._routes) >= 64:
                self._routes.clear()
            self._routes[key] = route
        return route

    def _check_fork(self) -> None:
        """In a forked child, drop the parent's pooled connections (our copies only)."""
        if self._generation != _forks:
            for adapter in self._session.adapters.values():
                adapter.close()
            self._generation = _forks

    def open_stream(self, url: str, what: str) -> Any:
        """A WebSocket on ``url`` within the timeout: urllib3's connection (TCP, tunnel, TLS),
        watched from the first byte, then websocket-client's upgrade on it. Raises _Failed."""
        import websocket

        self._check_fork()
        route = self.route(url)
        proxy = _stream_proxy(url, route, self.secrets)
        deadline, attempt_started = _Deadline.ambient().sooner(self.settings.attempt_seconds), _clock.now()
        ws = _read_ahead_websocket_class()(skip_utf8_validation=True, enable_multithread=False)
        attempt = _Attempt(deadline, self)
        failure: Any = None
        attempt.connection = ws
        logger.debug("%s: connecting to %s", what, self.secrets.redact(url))
        _watchdog.watch(attempt)
        _current.attempt = attempt
        try:
            sock = attempt.sock = _stream_socket(url, route, proxy, deadline.remaining())
            ws.connect(url, socket=_BoundedUpgrade(sock), redirect_limit=0,
                       header={"User-Agent": self.settings.user_agent})
            ws.sock = sock  # upgraded: frames are read from the socket itself
            failure = _upgrade_refusal(ws.handshake_response)
        except Exception as exc:  # noqa: BLE001 - the classifier sorts them out
            answered = ws.handshake_response is not None  # a redirect, say ("Redirect limit exhausted")
            failure = (_upgrade_refusal(ws.handshake_response) if answered else None) or exc
        finally:
            _current.attempt = None
            _watchdog.unwatch(attempt)
        if failure is None and attempt.cut is None:
            return ws
        ws.shutdown()
        if isinstance(failure, websocket.WebSocketBadStatusException) and attempt.cut is None:
            body = getattr(failure, "resp_body", None) or b""
            headers = requests.structures.CaseInsensitiveDict(getattr(failure, "resp_headers", None) or {})
            page = self.secrets.redact(body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body))
            raise self._failed(_Answer(failure.status_code, headers, page), what, stream=True)
        raise self._failed(_Cut(attempt.cut, deadline.at - attempt_started) if attempt.cut is not None else failure,
                           what, stream=True)


class _BoundedUpgrade:
    """The socket during the upgrade, whose answer websocket-client would read without limit."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock, self._read, self._lines = sock, 0, 0

    def recv(self, size: int) -> bytes:
        data = self._sock.recv(max(1, min(size, UPGRADE_ANSWER_BYTES - self._read)))
        self._read, self._lines = self._read + len(data), self._lines + data.count(b"\n")
        if self._read >= UPGRADE_ANSWER_BYTES or self._lines > UPGRADE_ANSWER_LINES:
            raise StreamError(f"the answer to the WebSocket upgrade is over {UPGRADE_ANSWER_BYTES // 1024} KiB "
                              f"or {UPGRADE_ANSWER_LINES} lines; refused")
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def _upgrade_refusal(answer: Any) -> Optional[_Answer]:
    """None for a 101 (whose Sec-WebSocket-Accept websocket-client has checked), else the answer
    to judge: websocket-client 1.4 takes a 3xx for an open socket."""
    status = getattr(answer, "status", None)
    if status == 101:
        return None
    return _Answer(status or 0, requests.structures.CaseInsensitiveDict(getattr(answer, "headers", None) or {}), "")


def _stream_proxy(url: str, route: Mapping[str, Any], secrets: _Secrets) -> Optional[tuple[str, int, Any]]:
    """The HTTP proxy requests would use for this URL (host, port, CONNECT headers), or None."""
    proxy = requests.utils.select_proxy(_as_http(url), dict(route["proxies"]))
    if not proxy:
        return None
    parts = urlsplit(proxy if "://" in proxy else "http://" + proxy)
    if parts.scheme != "http" or not parts.hostname:
        raise ConfigurationError(f"a stream can go through an http:// proxy only, not {secrets.redact(proxy)!r}; "
                                 "exempt the API's host with no_proxy, or use an http proxy")
    auth = f"{unquote(parts.username)}:{unquote(parts.password or '')}" if parts.username else None
    return parts.hostname, parts.port or 80, urllib3.util.make_headers(proxy_basic_auth=auth) if auth else None


def _stream_socket(url: str, route: Mapping[str, Any], proxy: Optional[tuple[str, int, Any]],
                   timeout: float) -> socket.socket:
    """A stream's socket: urllib3's connection, through any proxy tunnel, with TLS for wss."""
    parts = urlsplit(url)
    secure = parts.scheme == "wss"
    host, port = parts.hostname or "", parts.port or (443 if secure else 80)
    connection = _ReportingHTTPConnection(*(proxy[:2] if proxy else (host, port)), timeout=timeout)
    if proxy is not None:
        connection.set_tunnel(host, port, proxy[2])
    try:
        connection.connect()
        sock: socket.socket = connection.sock
        # CPython bounds the whole TLS handshake by the socket's timeout.
        return _stream_tls_context(route).wrap_socket(sock, server_hostname=host) if secure else sock
    except BaseException:
        connection.close()
        raise


def _stream_tls_context(route: Mapping[str, Any]) -> ssl.SSLContext:
    """urllib3's TLS context with the route's trust and client certificate."""
    verify, cert = route["verify"], route["cert"]
    context = urllib3.util.ssl_.create_urllib3_context(cert_reqs=ssl.CERT_NONE if verify is False else ssl.CERT_REQUIRED)
    context.check_hostname = verify is not False  # urllib3 1.26 leaves it off (it checks names itself)
    if verify is not False:
        bundle = requests.certs.where() if verify in (True, None) else verify  # type: ignore[attr-defined]
        context.load_verify_locations(**{"capath" if os.path.isdir(bundle) else "cafile": bundle})
    if cert:
        context.load_cert_chain(*([cert] if isinstance(cert, str) else cert))
    return context


# -- Streams ---------------------------------------------------------------------------

_FORKED_STREAM = ("this stream was opened before fork(): a stream cannot be carried into a child "
                  "process; open a new one there (the parent's is left untouched)")


class _Lost(Exception):
    """Internal: a connection (or attempt) ended with ``error``; another may work.
    ``refused``: the server refused the ticket."""

    def __init__(self, error: RakerOneError, message: str = "", refused: bool = False) -> None:
        super().__init__(message or str(error))
        self.error, self.refused = error, refused
        self.retry_after: float = getattr(error, "retry_after", None) or 0.0


class _Liveness:
    """The one judgement of a stream's life. A connection shows life with a new event, or a
    ping or pong after CONNECTION_WORKS_AFTER s open. An outage (no life) over ``max_outage``
    gives up; a ticket refused after life expired and is minted anew, two refusals without
    life raise AuthenticationError; ``idle_timeout`` spans reconnects."""

    def __init__(self, path: str, settings: _StreamSettings) -> None:
        self._path, self._settings = path, settings
        self.last_event_at = self._opened_at = _clock.now()
        self._outage_started: Optional[float] = self._opened_at  # None while a connection shows life
        self.working = False  # the current connection has shown life
        self._failures = self._refusals = 0  # in a row

    def opened(self) -> None:
        self._opened_at, self.working = _clock.now(), False

    def shown_life(self) -> None:
        self.working, self._outage_started, self._failures, self._refusals = True, None, 0, 0

    def answered(self) -> None:
        """The server pinged or ponged: life, once the connection has been open a while."""
        if not self.working and _clock.now() - self._opened_at >= CONNECTION_WORKS_AFTER:
            self.shown_life()

    def idle_until(self) -> float:
        idle = self._settings.idle_timeout
        return math.inf if idle is None else self.last_event_at + idle

    def check_idle(self, now: float) -> None:
        if now >= self.idle_until():
            raise StreamTimeoutError(f"no event for {self._settings.idle_timeout:g} s (idle_timeout)")

    def ended(self, lost: _Lost) -> None:
        """A connection, or an attempt at one, ended: wait for the next, or raise."""
        now, was_working = _clock.now(), self.working
        if self._outage_started is None:
            self._outage_started = now
        self.working = False
        if lost.refused:
            self._refusals += 1
            if self._refusals >= 2:
                raise AuthenticationError(
                    f"stream {self._path}: the server refused the WebSocket ticket ({lost}) even freshly "
                    "minted, twice in a row; the API key was accepted when minting it, so check that nothing "
                    "between here and the API alters the socket URL, and the server's ticket lifetime",
                    status_code=401)
            logger.info("stream %s: %s (%s); minting a fresh ticket", self._path, str(lost),
                        "expired" if was_working else "refused")
            return
        delay = self._delay(now, lost)
        if _Deadline.ambient().remaining() <= delay:
            raise StreamTimeoutError(f"stream {self._path}: the deadline passed while reconnecting ({lost})")
        logger.info("stream %s: %s; reconnecting in %.2f s", self._path, str(lost), delay)
        _clock.sleep(max(0.0, min(delay, self.idle_until() - now)))
        self.check_idle(_clock.now())

    def _delay(self, now: float, lost: _Lost) -> float:
        """Seconds to the next attempt; StreamDisconnectedError when the outage budget is spent."""
        self._failures += 1
        max_outage, outage = self._settings.max_outage, now - cast(float, self._outage_started)
        left = max_outage - outage
        if max_outage == 0:
            why = "reconnecting is off: max_outage=0"
        elif left <= 0:
            why = f"max_outage={max_outage:g} s"
        elif lost.retry_after > left:
            why = f"the server asked to retry after {lost.retry_after:g} s, beyond max_outage"
        else:
            backoff = _backoff(self._failures - 1, RECONNECT_BACKOFF_BASE, RECONNECT_BACKOFF_CAP)
            return min(max(backoff, lost.retry_after), left)
        raise StreamDisconnectedError(
            f"stream {self._path} ended after {self._failures} failed attempt(s) in a row, "
            f"{outage:.1f} s without a working connection ({why}): {lost}") from lost.error


class _RecentIds:
    """The last ``size`` event ids, oldest first (a long id as a 16-byte digest), for exactly-once.

    An unknown id that may be an old one the window let go (replayed after a reconnect,
    before any id the window holds) is kept as the oldest: it never pushes out the ids the
    replay brings next, so a replay longer than the window repeats only its oldest events.
    """

    def __init__(self, size: int) -> None:
        self._ids: collections.OrderedDict[Union[str, bytes], None] = collections.OrderedDict()
        self._size = size

    def add(self, event_id: str, forgotten: bool = False) -> bool:
        """Remember the id (as the oldest if it may be ``forgotten``); False when it was there."""
        key: Union[str, bytes] = event_id
        if len(event_id) > DEDUPE_DIGEST_ABOVE:
            key = hashlib.blake2b(event_id.encode("utf-8", "surrogatepass"), digest_size=16).digest()
        ids = self._ids
        if key in ids:
            return False
        ids[key] = None
        if forgotten:
            ids.move_to_end(key, last=False)
        if len(ids) > self._size:
            ids.popitem(last=False)
        return True


_OPCODE_TEXT, _OPCODE_BINARY, _OPCODE_CLOSE = 0x1, 0x2, 0x8
_raw_decode = json.JSONDecoder().raw_decode


def _decode_json(payload: bytes, secrets: _Secrets) -> Any:
    """Decode a frame's UTF-8 JSON exactly as ``json.loads`` would, or raise StreamError;
    ``raw_decode`` saves ~0.7 us an event, ``json.loads`` has the answer for the rest."""
    try:
        text = payload.decode("utf-8")
        try:
            message, end = _raw_decode(text)
        except ValueError:
            return json.loads(text)  # for its error (or its answer, after leading whitespace)
        return message if end == len(text) else json.loads(text)
    except ValueError:  # UnicodeDecodeError and JSONDecodeError both
        problem = "a frame that is not UTF-8 JSON"
    except RecursionError:
        problem = "JSON nested too deeply to decode"
    raise StreamError(f"received {problem}: {secrets.excerpt(bytes(payload), 80)!r}")


class _ConnectionReader:
    """Reads one connection's events, pinging and telling _Liveness what it sees. The socket
    wakes it at the nearest of ping, pong, idle and ambient deadline, even mid-frame; the
    wake-up is set on a change of state, never per frame. Duplicates do not put off a ping."""

    def __init__(self, ws: Any, settings: _StreamSettings, alive: _Liveness, secrets: _Secrets,
                 what: str) -> None:
        self._ws, self._settings, self._alive, self._secrets, self._what = ws, settings, alive, secrets, what
        self._deadline = _Deadline.ambient()
        self._last_frame_at = _clock.now()
        self._ping_sent_at: Optional[float] = None
        ws.max_message_bytes = settings.max_message_bytes
        ws.set_wake_time(self._next_wake())

    def events(self, seen: _RecentIds, born: int, replay: bool) -> Generator[Event, None, None]:
        """Yield events not ``seen``; return on close 1000, raise _Lost on a drop (``born``: fork
        generation; ``replay``: a reconnection, whose first unknown ids may be forgotten old ones)."""
        import websocket

        # The per-frame path: one JSON decode, no logging, names bound once.
        recv_data_frame, now, add_id, alive = self._ws.recv_data_frame, _clock.now, seen.add, self._alive
        from_message, wall_clock, utc = Event.from_message, datetime.datetime.now, datetime.timezone.utc
        while True:
            try:
                opcode, frame = recv_data_frame(True)
            except websocket.WebSocketTimeoutException:
                self._on_silence()
                continue
            except (OSError, websocket.WebSocketException) as exc:
                dropped: Exception = exc
                break
            if opcode == _OPCODE_TEXT or opcode == _OPCODE_BINARY:
                event = from_message(_decode_json(frame.data, self._secrets), wall_clock(utc))
                del frame  # free the payload before the loop body runs
                if event.id is None or add_id(event.id, replay):
                    self._last_frame_at = alive.last_event_at = now()
                    self._ping_sent_at = None
                    if not alive.working:
                        alive.shown_life()
                    yield event
                    if _forks != born:
                        raise StreamError(_FORKED_STREAM)
                else:
                    replay = False  # a known id: the replay has reached what the window holds
            elif opcode == _OPCODE_CLOSE:
                _on_close_frame(frame.data, self._secrets)
                return
            else:  # the server's ping or pong
                self._last_frame_at, self._ping_sent_at = now(), None
                alive.answered()
                self._check_deadlines(self._last_frame_at)
                self._ws.set_wake_time(self._next_wake())
        error, kind = _classify(dropped, self._what, self._secrets, 0.0, stream=True)
        raise _Lost(error) if kind != _FINAL else error

    def _on_silence(self) -> None:
        """Nothing new for a while: ping, declare the peer dead, or time out."""
        import websocket

        now, settings = _clock.now(), self._settings
        self._check_deadlines(now)
        if self._ping_sent_at is not None and now - self._ping_sent_at >= settings.ping_timeout:
            half_read = " (a frame was still arriving)" if self._ws.is_mid_frame else ""
            self._ws.shutdown()
            raise _Lost(StreamDisconnectedError(f"no answer to a ping within {settings.ping_timeout:g} s{half_read}"))
        if self._ping_sent_at is None and now - self._last_frame_at >= settings.ping_interval:
            try:
                self._ws.ping()
            except (OSError, websocket.WebSocketException) as exc:
                failure: Optional[Exception] = exc
            else:
                failure, self._ping_sent_at = None, now
            if failure is not None:
                raise _Lost(_classify(failure, self._what, self._secrets, 0.0, stream=True)[0])
        self._ws.set_wake_time(self._next_wake())

    def _check_deadlines(self, now: float) -> None:
        self._alive.check_idle(now)
        if now >= self._deadline.at:
            raise StreamTimeoutError("the deadline passed")

    def _next_wake(self) -> float:
        settings = self._settings
        if self._ping_sent_at is None:
            due = self._last_frame_at + settings.ping_interval
        else:
            due = self._ping_sent_at + settings.ping_timeout
        return min(due, self._alive.idle_until(), self._deadline.at)


#: A frame header as read: first byte, payload length, mask key (None: unmasked).
_FrameHeader = tuple[int, int, Optional[bytes]]


class _FrameReader:
    """Mixed into websocket-client's ``WebSocket``, overriding only its public ``recv_frame()``.

    Reads the socket READ_AHEAD_BYTES at a time (not three reads a frame) and cuts ``ABNF``
    frames from that buffer; the header comes first, so ``max_message_bytes`` refuses a
    message unread. No read waits past the wake-up time; a frame cut short is resumed.
    """

    #: The largest message accepted, fragments included; more is refused with close 1009.
    max_message_bytes = DEFAULT_MAX_MESSAGE_BYTES
    #: The websocket module, set by _read_ahead_websocket_class (imported on first use).
    websocket: Any = None
    sock: Optional[socket.socket]
    connected: bool

    def __init__(self, *args: Any, **options: Any) -> None:  # as websocket-client's, positional or not
        super().__init__(*args, **options)
        self._skip_utf8_validation = bool(getattr(getattr(self, "frame_buffer", None), "skip_utf8_validation", False))
        self._buffer = bytearray(READ_AHEAD_BYTES)
        self._view = memoryview(self._buffer)
        self._start = self._end = 0  # the bytes read and not yet parsed: _buffer[_start:_end]
        self._header: Optional[_FrameHeader] = None  # of a frame being read
        self._payload: Optional[bytearray] = None  # a long payload read into its own buffer
        self._payload_view: Optional[memoryview] = None
        self._filled = 0
        self._message_bytes = 0  # of the message so far, fragments included
        self._wake_at: Optional[float] = None

    @property
    def is_mid_frame(self) -> bool:
        """Whether part of a frame has arrived and the rest has not."""
        return self._header is not None or self._end > self._start

    def set_wake_time(self, instant: float) -> None:
        """Raise WebSocketTimeoutException from reads at this ``_clock`` instant."""
        self._wake_at = instant
        self.settimeout(max(instant - _clock.now(), 0.001))  # type: ignore[attr-defined]

    def recv_frame(self) -> Any:
        """The next frame. A whole, final, unmasked text or binary frame already in the
        buffer is cut out here; everything else goes the general way."""
        start, end = self._start, self._end
        if self._header is None and end - start >= 2:
            buffer = self._buffer
            first, length = buffer[start], buffer[start + 1]
            if length < 126:
                payload_start = start + 2
            elif length == 126 and end - start >= 4:
                length = buffer[start + 2] << 8 | buffer[start + 3]
                payload_start = start + 4
            else:  # a 64-bit length, a mask, or a header not all here
                return self._recv_any_frame()
            payload_end = payload_start + length
            # 0x81, 0x82: FIN, no reserved bits, text or binary.
            if (first == 0x81 or first == 0x82) and payload_end <= end and length <= self.max_message_bytes:
                self._start = payload_end
                self._message_bytes = length
                frame = self.websocket.ABNF(1, 0, 0, 0, first & 0x0F, 0, self._view[payload_start:payload_end].tobytes())
                frame.validate(self._skip_utf8_validation)
                return frame
        return self._recv_any_frame()

    def _recv_any_frame(self) -> Any:
        if self._header is None:
            self._header = self._read_header()
        first, length, mask_key = self._header
        payload = self._read_payload(length)
        self._header = None
        opcode, abnf = first & 0x0F, self.websocket.ABNF
        if mask_key is not None:  # servers must not mask; websocket-client unmasks anyway
            payload = abnf.mask(mask_key, payload)
        frame = abnf(first >> 7, first >> 6 & 1, first >> 5 & 1, first >> 4 & 1, opcode,
                     int(mask_key is not None), payload)
        frame.validate(self._skip_utf8_validation)
        return frame

    def _read_header(self) -> _FrameHeader:
        self._fill(2)
        first, second = self._buffer[self._start], self._buffer[self._start + 1]
        length = second & 0x7F
        length_bytes = 2 if length == 126 else 8 if length == 127 else 0
        mask_bytes = 4 if second & 0x80 else 0
        self._fill(2 + length_bytes + mask_bytes)
        start = self._start + 2
        if length_bytes:
            length = int.from_bytes(self._buffer[start:start + length_bytes], "big")
        start += length_bytes
        mask_key = bytes(self._buffer[start:start + mask_bytes]) if mask_bytes else None
        self._start = start + mask_bytes
        self._check_size(first & 0x0F, length)
        return first, length, mask_key

    def _check_size(self, opcode: int, length: int) -> None:
        """Refuse a frame too large before its payload is read."""
        if opcode >= _OPCODE_CLOSE:
            if length > 125:
                raise self.websocket.WebSocketProtocolException(
                    f"a control frame of {length:,} bytes (at most 125 are allowed)")
            return
        size = length if opcode else self._message_bytes + length  # opcode 0: a continuation
        if size > self.max_message_bytes:
            with contextlib.suppress(OSError, self.websocket.WebSocketException):  # the peer may be gone
                self.send_close(self.websocket.STATUS_MESSAGE_TOO_BIG, b"message too big")  # type: ignore[attr-defined]
            raise MessageTooLargeError(
                f"the server sent a message of {size:,} bytes{'' if opcode else ' so far'}, over "
                f"max_message_bytes={self.max_message_bytes:,}; it was refused unread (close 1009). "
                "Raise max_message_bytes if such messages are expected")
        self._message_bytes = size

    def _fill(self, count: int) -> None:
        """Make ``count`` bytes of the current frame available in the buffer."""
        while self._end - self._start < count:
            if self._end == self._start:
                self._start = self._end = 0
            elif self._start + count > len(self._buffer):  # a header cut by the buffer's end
                kept = self._end - self._start
                self._buffer[:kept] = self._buffer[self._start:self._end]
                self._start, self._end = 0, kept
            self._end += self._read_into(self._view[self._end:])

    def _read_payload(self, length: int) -> bytes:
        """The payload as bytes, as websocket-client's own frames carry it."""
        if self._payload is None:
            start, available = self._start, self._end - self._start
            if available >= length:
                self._start = start + length
                return self._view[start:start + length].tobytes()
            self._payload = bytearray(length)
            self._payload[:available] = self._view[start:self._end]
            self._payload_view = memoryview(self._payload)
            self._filled, self._start, self._end = available, 0, 0
        payload, view = self._payload, self._payload_view
        assert payload is not None and view is not None
        while self._filled < length:
            self._filled += self._read_into(view[self._filled:])
        view.release()
        self._payload = self._payload_view = None
        return bytes(payload)

    def _read_into(self, view: memoryview) -> int:
        """One read, never past the wake-up time, raising websocket-client's exceptions."""
        sock, websocket = self.sock, self.websocket
        if sock is None:
            raise websocket.WebSocketConnectionClosedException("socket is already closed.")
        if self._wake_at is not None:
            left = self._wake_at - _clock.now()
            if left <= 0:
                raise websocket.WebSocketTimeoutException("the wake-up time came before the frame was complete")
            sock.settimeout(left)
        try:
            count = sock.recv_into(view)
        except socket.timeout as exc:
            raise websocket.WebSocketTimeoutException(str(exc) or "timed out") from None
        finally:
            view.release()  # the caller's slice: no export of our buffers outlives the read
        if not count:
            self.connected = False
            raise websocket.WebSocketConnectionClosedException("Connection to remote host was lost.")
        return count


@functools.cache
def _read_ahead_websocket_class() -> type:
    """websocket-client's WebSocket with _FrameReader, built on first use (websocket is imported lazily)."""
    import websocket

    return type("ReadAheadWebSocket", (_FrameReader, websocket.WebSocket), {"websocket": websocket})


def _on_close_frame(payload: bytes, secrets: _Secrets) -> None:
    """Act on the server's close: return on 1000, else raise what the classifier says."""
    code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
    reason = secrets.excerpt(payload[2:], 123) if len(payload) > 2 else ""  # 123 bytes at most
    if code == 1000:
        logger.debug("server closed the stream with 1000")
        return
    error, kind = _classify(_Closed(code, reason), "", secrets, 0.0, stream=True)
    if isinstance(error, AuthenticationError):
        raise _Lost(error, f"close {code}" + (f": {reason}" if reason else ""), refused=True)
    raise _Lost(error) if kind != _FINAL else error


def _close_socket(ws: Any, polite: bool) -> None:
    """Close 1000 (waiting CLOSE_TIMEOUT at most) when ``polite`` (not in a forked child), and release."""
    if ws.connected and polite:
        wait = _Deadline.ambient().clamp(CLOSE_TIMEOUT)
        ws.set_wake_time(_clock.now() + wait)  # a half-read frame cannot hold it longer
        ws.close(status=1000, timeout=wait)
    ws.shutdown()


_SOCKET_SCHEMES = {"ws": "ws", "wss": "wss", "http": "ws", "https": "wss"}


def _stream_url(transport: _Transport, path: str, ticket: WsTicket) -> str:
    """The ticket's ``wsUrl``, else ``<base>/…/ws?ticket=``, as ws(s), never cleartext unless allowed."""
    settings = transport.settings
    url = ticket.ws_url or f"{settings.base_url}{path}/ws?ticket={quote(ticket.ticket, safe='')}"
    parts = urlsplit(url)
    scheme = _SOCKET_SCHEMES.get(parts.scheme.lower())
    if scheme is None or not parts.hostname:
        raise StreamError(f"the ticket's wsUrl is not a ws(s) URL: {transport.secrets.redact(url)!r}")
    if scheme == "ws" and settings.base_url.startswith("https:"):
        raise StreamError("refusing the ticket's wsUrl: it downgrades https to plain ws, "
                          "which would send the ticket and events in clear")
    if scheme == "ws" and not _is_loopback(parts.hostname) and not settings.allow_insecure_http:
        raise StreamError(f"refusing the ticket's plain-ws wsUrl to {parts.hostname}: the ticket would "
                          "cross the network in clear; pass allow_insecure_http=True if you really mean it")
    return urlunsplit((scheme,) + tuple(parts[1:]))


def _open_connection(transport: _Transport, path: str, mint_ticket: Callable[[], WsTicket]) -> Any:
    """Mint a ticket and open a WebSocket; _Lost when another attempt may work, else our error."""
    try:
        ticket = mint_ticket()
    except RakerOneError as error:
        if not error.retryable:
            raise  # the key's problem (or TLS, or a setting), and its message
        raise _Lost(error, f"could not mint a ticket: {error}") from None
    try:
        return transport.open_stream(_stream_url(transport, path, ticket), f"stream {path}")
    except _Failed as failed:
        if isinstance(failed.error, AuthenticationError):
            raise _Lost(failed.error, f"HTTP {failed.error.status_code} at the upgrade", refused=True) from None
        raise (failed.error if failed.kind == _FINAL else _Lost(failed.error)) from None


def _iter_events(transport: _Transport, path: str, mint_ticket: Callable[[], WsTicket],
                 settings: _StreamSettings) -> Generator[Event, None, None]:
    """A stream's events, each once, over as many connections as its liveness allows."""
    seen, alive, born, connections = _RecentIds(DEDUPE_WINDOW), _Liveness(path, settings), _forks, 0
    while True:
        if _forks != born:
            raise StreamError(_FORKED_STREAM)
        try:
            ws = _open_connection(transport, path, mint_ticket)
        except _Lost as lost:
            alive.ended(lost)
            continue
        alive.opened()
        connections += 1
        reader = _ConnectionReader(ws, settings, alive, transport.secrets, f"stream {path}")
        try:
            yield from reader.events(seen, born, replay=connections > 1)
            return
        except _Lost as lost:
            ended = lost
        finally:
            _close_socket(ws, polite=_forks == born)
        alive.ended(ended)


# -- Client ----------------------------------------------------------------------------


def _parsed(from_dict: Callable[[Any], Any], data: Any, what: str, payload: Any = None) -> Any:
    """A model from the server's JSON, or UnexpectedResponseError for the wrong shape."""
    try:
        return from_dict(data)
    except _WrongShape as exc:
        error = UnexpectedResponseError(f"{what} answered with an unexpected body: {exc}", status_code=200,
                                        body=payload if payload is not None else data)
    raise error


class Client:
    """A blocking RakerOne API client.

    Parameters:
        api_key: an organization API key or WorkOS session JWT; default ``$RAKERONE_API_KEY``.
        base_url: the API root; default ``$RAKERONE_BASE_URL``, else production.
        timeout: seconds each HTTP attempt may take end to end (connect, headers and
            the whole body), or a ``(connect, read)`` pair whose sum bounds it.
        max_retries: extra attempts on connection errors, timeouts, 408, 429 and 5xx.
        verify: TLS verification, or a CA bundle path; default: the session's (True).
        session: a ``requests.Session`` to send through (its hooks, cookies, adapters,
            proxies and TLS settings apply; ``close()`` leaves it open).
        user_agent: a product token put in front of ours.
        allow_insecure_http: allow the key over plain http beyond this machine.
        max_response_bytes: the largest response body read; a larger one is refused.

    One client may be shared by threads, survives ``fork()`` (a child opens its own
    connections) and may be used again after ``close()``. Raises ConfigurationError
    for a missing key or an unusable setting.
    """

    def __init__(self, api_key: Optional[str] = None, *, base_url: Optional[str] = None,
                 timeout: Timeout = DEFAULT_TIMEOUT, max_retries: int = DEFAULT_MAX_RETRIES,
                 verify: Union[bool, str, None] = None, session: Optional[requests.Session] = None,
                 user_agent: Optional[str] = None, allow_insecure_http: bool = False,
                 max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES) -> None:
        settings = _Settings.checked(api_key, base_url, timeout, max_retries, verify, user_agent,
                                     allow_insecure_http, max_response_bytes)
        #: The API root, without a trailing slash.
        self.base_url = settings.base_url
        self._transport = _Transport(settings, session)

    def __repr__(self) -> str:
        return f"<rakerone.Client base_url={getattr(self, 'base_url', None)!r}>"

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def close(self) -> None:
        """Close the client's HTTP session (not one you passed); a call still in flight
        in another thread is cut short with APIConnectionError."""
        self._transport.close()

    def get_run(self, project_id: Id, run_id: Id) -> PlaybookRun:
        """Fetch one playbook run.

        Raises NotFoundError for an unknown project or run, AuthenticationError for a
        refused key, APIConnectionError when the API cannot be reached.
        """
        path = _run_path(project_id, run_id)
        payload = self._transport.call("GET", path)
        run = payload.get("run") if isinstance(payload, dict) else None
        return cast(PlaybookRun, _parsed(PlaybookRun.from_dict, run, f"GET {path}", payload))

    def mint_run_ticket(self, project_id: Id, run_id: Id) -> WsTicket:
        """Mint a short-lived ticket for the run's WebSocket (see ``iter_run_events``)."""
        return self._mint_ticket(_run_path(project_id, run_id) + "/ws-ticket")

    def mint_brief_ticket(self, project_id: Id, brief_id: Id) -> WsTicket:
        """Mint a short-lived ticket for the brief's shaping-log WebSocket."""
        return self._mint_ticket(_brief_path(project_id, brief_id) + "/ws-ticket")

    def _mint_ticket(self, path: str) -> WsTicket:
        # Minting is documented as safe to repeat: a lost answer only wastes a ticket.
        ticket: WsTicket = _parsed(WsTicket.from_dict, self._transport.call("POST", path, resend_unsafe=True),
                                   f"POST {path}")
        self._transport.secrets.add_ticket(ticket.ticket)
        return ticket

    def request(self, method: str, path: str, *ids: Id, params: Params = None, json: Any = None) -> Any:
        """Call any API endpoint through this client's auth, retries and errors.

        ``path`` is relative to the base URL; each ``{}`` in it is filled with one of
        ``ids``, encoded as a single path segment. Returns the decoded JSON (None for an
        empty answer). POST and PATCH are resent only when the server cannot have
        acted on them (no connection, or 429/503).
        """
        return self._transport.call(_check_method(method), _fill_path(path, ids), params=params,
                                    body=_check_json(json))

    def wait_for_run(self, project_id: Id, run_id: Id, *, timeout: Optional[float] = None,
                     on_update: Optional[Callable[[PlaybookRun], None]] = None) -> PlaybookRun:
        """Block until the run finishes, and return it (succeeded or not).

        Follows the run's events and confirms with ``get_run``, or polls. Failures with
        ``error.retryable`` (network, timeouts, 5xx, 429, lost streams) are waited out; the
        others raise at once. After ``timeout`` seconds (nothing runs past it), raises
        WaitTimeoutError with the last run seen. ``on_update`` gets each state seen.
        """
        _run_path(project_id, run_id)
        if timeout is not None:
            _checked_number("timeout", timeout)
        if on_update is not None and not callable(on_update):
            raise ConfigurationError("on_update must be a function taking a PlaybookRun")
        return _RunWait(self, project_id, run_id, timeout, on_update).wait()

    def iter_run_events(self, project_id: Id, run_id: Id, *, max_outage: float = DEFAULT_MAX_OUTAGE,
                        ping_interval: float = DEFAULT_PING_INTERVAL, ping_timeout: float = DEFAULT_PING_TIMEOUT,
                        idle_timeout: Optional[float] = None,
                        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> Generator[Event, None, None]:
        """Yield the run's live events, each exactly once, until the server ends the stream.

        Every connection mints a fresh ticket; replayed ids are skipped. Drops reconnect
        until ``max_outage`` seconds pass without a working connection (0: never). A silent
        peer is pinged after ``ping_interval`` s, dropped after ``ping_timeout`` more. Raises
        StreamDisconnectedError (outage), MessageTooLargeError (``max_message_bytes``),
        StreamError (not JSON), StreamTimeoutError (``idle_timeout`` without an event), and
        AuthenticationError / PermissionDeniedError / NotFoundError when refused.
        """
        settings = _StreamSettings.checked(max_outage, max_message_bytes, ping_interval, ping_timeout, idle_timeout)
        return _iter_events(self._transport, _run_path(project_id, run_id),
                            lambda: self.mint_run_ticket(project_id, run_id), settings)

    def iter_brief_events(self, project_id: Id, brief_id: Id, *, max_outage: float = DEFAULT_MAX_OUTAGE,
                          ping_interval: float = DEFAULT_PING_INTERVAL, ping_timeout: float = DEFAULT_PING_TIMEOUT,
                          idle_timeout: Optional[float] = None,
                          max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> Generator[Event, None, None]:
        """Yield the brief's shaping-log entries live; behaves as ``iter_run_events``."""
        settings = _StreamSettings.checked(max_outage, max_message_bytes, ping_interval, ping_timeout, idle_timeout)
        return _iter_events(self._transport, _brief_path(project_id, brief_id),
                            lambda: self.mint_brief_ticket(project_id, brief_id), settings)

    def redact(self, text: str) -> str:
        """``text`` with this client's key and recent tickets hidden, in every form they travel."""
        return self._transport.secrets.redact(text)


# -- Waiting for a run -----------------------------------------------------------------

WAIT_POLL_FIRST, WAIT_POLL_CAP = 1.0, 15.0  # seconds without news before the run is checked, doubling to the cap
WAIT_REFRESH_EVERY = 1.0  # at most one get_run per this many seconds while events flow
#: Kept before the deadline (at most this, and a tenth of the wait) for a last look at the run.
WAIT_LAST_LOOK = 1.0


class _RunWait:
    """Waits for a run through the public API: follows its events, confirming with get_run at
    most once a second while they flow, after a quiet spell (1 s doubling to 15 s) or a stream
    error, and just before the deadline; polls without a stream. Waits out ``retryable`` errors."""

    def __init__(self, client: Client, project_id: Id, run_id: Id, timeout: Optional[float],
                 on_update: Optional[Callable[[PlaybookRun], None]]) -> None:
        self._client, self._project_id, self._run_id = client, project_id, run_id
        self._timeout, self._on_update = timeout, on_update
        self._deadline = _Deadline.after(timeout)
        self._working = _Deadline.after(None if timeout is None else timeout - min(WAIT_LAST_LOOK, timeout / 10))
        self._last_run: Optional[PlaybookRun] = None
        self._last_error: Optional[RakerOneError] = None
        self._stream_refused = False

    def wait(self) -> PlaybookRun:
        with self._deadline.applied():
            with self._working.applied():
                run = self._watch()
            run = run or self._check()  # the last look, in the time kept for it
            if run is not None and run.is_terminal:
                return run
            _clock.sleep(self._deadline.remaining())  # the caller gave the run this long
        if self._last_run is None:
            message = (f"gave up waiting for run {self._run_id} after {self._timeout:g} s: "
                       f"the API could not be reached ({self._last_error})")
        else:
            message = f"run {self._run_id} still {self._last_run.status or 'unfinished'} after {self._timeout:g} s"
        raise WaitTimeoutError(message, self._last_run, self._last_error)

    def _watch(self) -> Optional[PlaybookRun]:
        """The finished run, or None once the working time is over."""
        quiet = WAIT_POLL_FIRST
        while not self._working.expired:
            run = self._check()
            if run is not None and run.is_terminal:
                return run
            if run is None or self._stream_refused:
                retry_after = getattr(self._last_error, "retry_after", None) or 0.0
                _clock.sleep(self._working.clamp(max(quiet, retry_after)))
                quiet = min(quiet * 2, WAIT_POLL_CAP)
            else:
                run, quiet = self._follow_stream(quiet)
                if run is not None:
                    return run
        return None

    def _check(self) -> Optional[PlaybookRun]:
        """The run now, or None after trouble worth waiting out (kept in ``_last_error``)."""
        try:
            run = self._client.get_run(self._project_id, self._run_id)
        except RakerOneError as error:
            self._note_trouble(error)
            return None
        self._last_run, self._last_error = run, None
        if self._on_update is not None:
            self._on_update(run)
        return run

    def _note_trouble(self, error: RakerOneError) -> None:
        if not error.retryable and not _Deadline.ambient().expired:
            raise error
        logger.info("waiting for run %s: %s; trying again", self._run_id, str(error))
        self._last_error = error

    def _follow_stream(self, quiet: float) -> tuple[Optional[PlaybookRun], float]:
        """Follow events until the stream ends, fails or is ``quiet``: a finished run, and the next quiet."""
        events = self._client.iter_run_events(self._project_id, self._run_id, idle_timeout=quiet)
        last_check, news = _clock.now(), False
        try:
            while self._next_event(events):
                news = True
                if _clock.now() - last_check >= WAIT_REFRESH_EVERY:
                    last_check, run = _clock.now(), self._check()
                    if run is not None and run.is_terminal:
                        return run, quiet
        finally:
            events.close()
        return None, WAIT_POLL_FIRST if news else min(quiet * 2, WAIT_POLL_CAP)

    def _next_event(self, events: Iterator[Event]) -> bool:
        """Whether a new event arrived; a stream refused for good is left for polling."""
        try:
            next(events)
            return True
        except (StopIteration, StreamTimeoutError):  # ended; quiet for a while, or the deadline
            return False
        except RakerOneError as error:
            if error.retryable:
                self._note_trouble(error)
            else:
                logger.info("waiting for run %s: no event stream (%s); polling instead", self._run_id, str(error))
                self._stream_refused = True
            return False


# -- Shortcuts -------------------------------------------------------------------------


def get_run(project_id: Id, run_id: Id) -> PlaybookRun:
    """Fetch one run with a client built from the environment; see ``Client.get_run``."""
    with Client() as client:
        return client.get_run(project_id, run_id)


def mint_run_ticket(project_id: Id, run_id: Id) -> WsTicket:
    """Mint a run ticket with a client built from the environment."""
    with Client() as client:
        return client.mint_run_ticket(project_id, run_id)


def mint_brief_ticket(project_id: Id, brief_id: Id) -> WsTicket:
    """Mint a brief ticket with a client built from the environment."""
    with Client() as client:
        return client.mint_brief_ticket(project_id, brief_id)


def wait_for_run(project_id: Id, run_id: Id, *, timeout: Optional[float] = None,
                 on_update: Optional[Callable[[PlaybookRun], None]] = None) -> PlaybookRun:
    """Wait for a run with a client built from the environment; see ``Client.wait_for_run``."""
    with Client() as client:
        return client.wait_for_run(project_id, run_id, timeout=timeout, on_update=on_update)


def request(method: str, path: str, *ids: Id, params: Params = None, json: Any = None) -> Any:
    """Call any API path with a client built from the environment; see ``Client.request``."""
    with Client() as client:
        return client.request(method, path, *ids, params=params, json=json)


def iter_run_events(project_id: Id, run_id: Id, **options: Any) -> Generator[Event, None, None]:
    """Follow a run's events with a client from the environment; see ``Client.iter_run_events``."""
    return _with_own_client(lambda client: client.iter_run_events(project_id, run_id, **options))


def iter_brief_events(project_id: Id, brief_id: Id, **options: Any) -> Generator[Event, None, None]:
    """Follow a brief's shaping log with a client built from the environment."""
    return _with_own_client(lambda client: client.iter_brief_events(project_id, brief_id, **options))


def _with_own_client(start: Callable[[Client], Iterator[Event]]) -> Generator[Event, None, None]:
    client = Client()
    try:
        events = start(client)  # checks the arguments now, not at the first next()
    except BaseException:
        client.close()
        raise
    return _closing(client, events)


def _closing(client: Client, events: Iterator[Event]) -> Generator[Event, None, None]:
    with client:
        yield from events


def main(argv: Optional[list[str]] = None) -> int:
    """Run the ``rakerone`` command (it lives in rakerone_cli); return its exit code."""
    from rakerone_cli import main as command

    return command(argv)


if __name__ == "__main__":
    raise SystemExit(main())
