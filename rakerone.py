"""A synchronous Python client for the RakerOne API.

Blocking calls for scripts, cron jobs and legacy codebases: fetch a playbook run,
mint WebSocket tickets, and follow a run's (or a brief's) live events without
ever hanging, losing an event or printing a credential::

    import rakerone

    with rakerone.Client() as client:          # reads RAKERONE_API_KEY
        run = client.get_run("proj_1", "run_1")
        for event in client.iter_run_events("proj_1", "run_1"):
            print(event.type, event.data)
"""

from __future__ import annotations

__version__ = "0.1.0"

import collections
import datetime
import email.utils
import functools
import ipaddress
import json
import logging
import os
import platform
import random
import re
import socket
import ssl
import struct
import sys
import threading
import time
import uuid
from collections.abc import Generator, Iterable, Iterator, Mapping
from typing import Any, Callable, Optional, Union, cast
from urllib.parse import parse_qsl, quote, quote_plus, unquote, urlsplit, urlunsplit

import attrs
import requests
import requests.adapters
import requests.auth
import requests.cookies
import requests.structures
import urllib3
import urllib3.connection
import urllib3.exceptions
import urllib3.util
import urllib3.util.ssl_

__all__ = [
    # client
    "Client",
    # shortcuts
    "get_run",
    "mint_run_ticket",
    "mint_brief_ticket",
    "wait_for_run",
    "request",
    "iter_run_events",
    "iter_brief_events",
    # models
    "PlaybookRun",
    "RunStep",
    "WsTicket",
    "Event",
    # errors
    "RakerOneError",
    "ConfigurationError",
    "APIError",
    "BadRequestError",
    "AuthenticationError",
    "PermissionDeniedError",
    "NotFoundError",
    "RateLimitError",
    "ServerError",
    "UnexpectedResponseError",
    "ResponseTooLargeError",
    "APIConnectionError",
    "APITimeoutError",
    "ProxyAuthenticationError",
    "StreamError",
    "StreamTimeoutError",
    "StreamDisconnectedError",
    "MessageTooLargeError",
    "WaitTimeoutError",
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
#: The longest number of seconds any timeout or interval may be (a week): larger
#: values are surely a mistake, and overflow the platform's timers.
MAX_SECONDS = 7 * 24 * 3600.0
#: How much of an error page is read for its message.
ERROR_PAGE_BYTES = 1024 * 1024
#: How many recently minted tickets each client remembers, to redact them anywhere.
TICKETS_REMEMBERED = 256

#: Statuses worth another try: the request may well succeed a moment later.
RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
#: Statuses that say the server did not act on the request, so even a POST may be resent.
NOT_ACTED_STATUSES = frozenset({429, 503})
#: Methods that may be sent twice without a second side effect.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
RETRY_BACKOFF_BASE = 0.5  # seconds; doubled per attempt, then fully jittered
RETRY_BACKOFF_CAP = 8.0
#: A longer Retry-After is not slept through: the RateLimitError is raised at once.
RETRY_AFTER_CAP = 60.0

#: Seconds a stream may go without a working connection before it gives up (max_outage).
DEFAULT_MAX_OUTAGE = 60.0
RECONNECT_BACKOFF_BASE = 0.25  # seconds; doubled per failed attempt, capped, fully jittered
RECONNECT_BACKOFF_CAP = 10.0
#: A connection that stays open this long, or delivers a new event, counts as working.
CONNECTION_WORKS_AFTER = 0.5
#: The largest message a stream accepts by default (max_message_bytes), fragments included.
DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
#: How many recent event ids a stream remembers to drop replayed events.
DEDUPE_WINDOW = 10_000
#: Longer ids are remembered as a 16-byte digest, so the window's memory is bounded.
DEDUPE_DIGEST_ABOVE = 64
#: How many bytes a stream reads from its socket at a time (see _read_ahead_websocket_class).
READ_AHEAD_BYTES = 256 * 1024
#: How long closing a stream waits for the server to answer our close frame.
CLOSE_TIMEOUT = 1.0
#: Close codes after which a stream reconnects (besides a dropped connection).
RECONNECT_CLOSE_CODES = frozenset({1001, 1005, 1006, 1011, 1012, 1013, 1014})
#: Close codes that mean "not allowed", mapped to the HTTP status they stand for.
CLOSE_CODE_STATUS = {1008: 403, 4401: 401, 4403: 403, 4404: 404}
#: The default of the deprecated stream options, to tell "not given" from any value.
_NOT_GIVEN: Any = object()

#: Run statuses (lower case, ``-``/space as ``_``) that end a run; the vocabulary is
#: not documented, so both lists are generous.
SUCCESS_STATUSES = frozenset(
    {"completed", "complete", "succeeded", "success", "successful", "done"}
)
FAILURE_STATUSES = frozenset(
    {
        "failed", "failure", "error", "errored", "cancelled", "canceled",
        "timed_out", "timeout", "aborted", "rejected", "expired", "terminated",
        "killed", "skipped_all",
    }
)

logger = logging.getLogger("rakerone")

# -- Errors ----------------------------------------------------------------------------


class RakerOneError(Exception):
    """Base class of every error this module raises."""


class ConfigurationError(RakerOneError, ValueError):
    """A setting or argument the client cannot use; raised before any network traffic."""


class APIError(RakerOneError):
    """The API answered with an error status (or with a body we cannot read)."""

    def __init__(
        self,
        message: str,
        *,
        status_code: Optional[int] = None,
        code: Optional[str] = None,
        issues: tuple[Any, ...] = (),
        request_id: Optional[str] = None,
        response: Optional[requests.Response] = None,
        body: Any = None,
        retry_after: Optional[float] = None,
    ) -> None:
        super().__init__(message)
        #: The HTTP status of the answer.
        self.status_code = status_code
        #: ``ErrorResponse.error``, the machine-readable code (``not_found``...).
        self.code = code
        #: ``ErrorResponse.issues``, present when ``code`` is ``invalid_body``.
        self.issues = issues
        self.request_id = request_id
        self.response = response
        #: The decoded JSON body, or None when it was not JSON.
        self.body = body
        #: Seconds the server asked us to wait (``Retry-After``), when it said.
        self.retry_after = retry_after

    @property
    def message(self) -> str:
        return str(self)


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
    """No event arrived within the stream's ``idle_timeout``."""


class StreamDisconnectedError(StreamError):
    """The stream was lost and could not be restored within its ``max_outage``."""


class MessageTooLargeError(StreamError):
    """The server sent a message over ``max_message_bytes``; it was refused unread (close 1009)."""


class WaitTimeoutError(RakerOneError):
    """``wait_for_run`` reached its deadline before the run finished.

    ``run`` is the last state seen (None if the API never answered) and
    ``last_error`` the last transient failure, if any.
    """

    def __init__(self, message: str, run: Optional[PlaybookRun] = None,
                 last_error: Optional[RakerOneError] = None) -> None:
        super().__init__(message)
        self.run = run
        self.last_error = last_error


_ERROR_CLASSES = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    429: RateLimitError,
}

_ERROR_HINTS = {
    401: f"check that {API_KEY_ENV} (or api_key=) holds a valid RakerOne API key",
    403: "the API key is valid but may not access this project",
    404: "check the ids and the base URL",
    429: "the API is rate limiting this key; slow down",
}


def _error_class(status_code: int) -> type[APIError]:
    if status_code >= 500:
        return ServerError
    return _ERROR_CLASSES.get(status_code, APIError)


_TICKET_IN_URL = re.compile(r"(ticket=)[^&#\s'\"]+", re.IGNORECASE)
_BEARER_TOKEN = re.compile(r"(Bearer\s+)[^\s'\",;]+", re.IGNORECASE)


def _redact(text: str, *secrets: Optional[str]) -> str:
    """Hide each secret in every form it travels in (raw, percent-encoded, JSON),
    and any bearer token or ``ticket=`` value, so no key or ticket is ever quoted."""
    forms = {form for secret in secrets if secret
             for form in (secret, quote(secret, safe=""), quote(secret), quote_plus(secret),
                          json.dumps(secret)[1:-1])}
    if forms:
        pattern = "|".join(re.escape(form) for form in sorted(forms, key=len, reverse=True))
        text = re.sub(pattern, "***", text, flags=re.IGNORECASE)
    text = _BEARER_TOKEN.sub(r"\1***", text)
    return _TICKET_IN_URL.sub(r"\1***", text)


def _excerpt(content: Union[bytes, str], limit: int = 200, secrets: tuple[Optional[str], ...] = ()) -> str:
    """The start of a server's text on one line, redacted whole before it is cut
    (so no part of a secret survives at the cut)."""
    if isinstance(content, bytes):
        content = content.decode("utf-8", "replace")
    text = _redact(" ".join(content.split()), *secrets)
    return text[:limit] + ("..." if len(text) > limit else "")


# -- Models ----------------------------------------------------------------------------


_FRACTION = re.compile(r"\.(\d+)")


def _parse_timestamp(value: Any) -> Optional[datetime.datetime]:
    """Read an ISO-8601 timestamp as an aware datetime; None when it does not parse.

    Python 3.9's ``fromisoformat`` knows neither ``Z`` nor fractions other than 3 or
    6 digits, so both are normalised. A timestamp without offset is UTC.
    """
    if not isinstance(value, str):
        return None
    text = value.strip()
    text = text[:-1] + "+00:00" if text[-1:] in ("Z", "z") else text
    try:
        parsed = datetime.datetime.fromisoformat(text)
    except ValueError:
        text = _FRACTION.sub(lambda m: "." + m.group(1)[:6].ljust(6, "0"), text, count=1)
        try:
            parsed = datetime.datetime.fromisoformat(text)
        except ValueError:
            return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.timezone.utc)
    return parsed


def _optional_str(value: Any) -> Optional[str]:
    """An id-like value as str: strings as they are, integers written out."""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


class _WrongShape(TypeError):
    """Internal: a server's JSON is not of the shape a model needs."""


def _require_mapping(data: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise _WrongShape(f"{what} must be a JSON object, not {type(data).__name__}")
    return data


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
        return cls(
            step_id=_optional_str(data.get("stepId", data.get("id"))),
            name=_optional_str(data.get("name")),
            status=_optional_str(data.get("status")),
            started_at=_parse_timestamp(data.get("startedAt")),
            finished_at=_parse_timestamp(data.get("finishedAt")),
            raw=dict(data),
        )


@attrs.frozen
class PlaybookRun:
    """A playbook run. Every field is optional; the server's object is ``raw``.

    ``is_terminal`` is true once ``finishedAt`` is set, or the status (compared
    case-insensitively, ``-`` and spaces read as ``_``) is one of
    ``SUCCESS_STATUSES`` or ``FAILURE_STATUSES``. ``succeeded`` is true only for a
    status in ``SUCCESS_STATUSES``: an unknown status never counts as success.
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
        steps = data.get("steps")
        metadata = data.get("metadata")
        return cls(
            id=_optional_str(data.get("id")),
            project_id=_optional_str(data.get("projectId")),
            status=_optional_str(data.get("status")),
            started_at=_parse_timestamp(data.get("startedAt")),
            finished_at=_parse_timestamp(data.get("finishedAt")),
            triggered_by=_optional_str(data.get("triggeredBy")),
            steps=tuple(
                RunStep.from_dict(step)
                for step in (steps if isinstance(steps, list) else ())
                if isinstance(step, Mapping)
            ),
            metadata=dict(metadata) if isinstance(metadata, Mapping) else {},
            raw=dict(data),
        )

    @property
    def is_terminal(self) -> bool:
        """Whether the run has finished, well or not."""
        status = _normalise_status(self.status)
        return (
            self.raw.get("finishedAt") not in (None, "")
            or status in SUCCESS_STATUSES
            or status in FAILURE_STATUSES
        )

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
        ticket = data.get("ticket")
        if not isinstance(ticket, str) or not ticket:
            raise _WrongShape("a ws-ticket response must carry a non-empty 'ticket' string")
        expires_in = data.get("expiresInSeconds")
        ws_url = data.get("wsUrl")
        return cls(
            ticket=ticket,
            expires_at=_parse_timestamp(data.get("expiresAt")),
            expires_in_seconds=(
                float(expires_in)
                if isinstance(expires_in, (int, float)) and not isinstance(expires_in, bool)
                else None
            ),
            ws_url=ws_url if isinstance(ws_url, str) and ws_url else None,
            raw=dict(data),
        )


@attrs.frozen
class Event:
    """One message from a live stream. The format is not documented, so nothing is
    dropped: ``raw`` is the decoded message, untouched.

    ``type`` comes from ``type`` or ``event``, ``id`` from ``id`` or ``eventId`` (as
    str), ``data`` is the message's ``data`` or ``payload`` member when present, else
    the whole message.
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
        if "data" in message:
            data = message["data"]
        elif "payload" in message:
            data = message["payload"]
        else:
            data = message
        return cls(
            type=event_type if type(event_type) is str else _optional_str(event_type),
            id=event_id if type(event_id) is str else _optional_str(event_id),
            data=data,
            raw=message,
            received_at=received_at,
        )


# -- HTTP ------------------------------------------------------------------------------

Timeout = Union[float, tuple[float, float]]
#: An id as the API takes it: a string, or an int or UUID written out.
Id = Union[str, int, uuid.UUID]


class _BearerAuth(requests.auth.AuthBase):
    """Adds the API key per request, so a session passed in is never altered, and
    requests drops it on a redirect to another host."""

    def __init__(self, api_key: str) -> None:
        self._header = f"Bearer {api_key}"

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = self._header
        return request

    def __repr__(self) -> str:
        return "<_BearerAuth ***>"


def _positive_number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigurationError(f"{name} must be a positive number of seconds, not {value!r}")
    if value > MAX_SECONDS:
        raise ConfigurationError(
            f"{name} must be at most {MAX_SECONDS:.0f} seconds (a week), not {value!r}")
    return float(value)


def _check_timeout(timeout: Any) -> Timeout:
    if isinstance(timeout, tuple):
        if len(timeout) != 2:
            raise ConfigurationError(f"timeout must be seconds or (connect, read), not {timeout!r}")
        return (_positive_number("connect timeout", timeout[0]),
                _positive_number("read timeout", timeout[1]))
    return _positive_number("timeout", timeout)


_VISIBLE_ASCII = re.compile(r"[\x21-\x7e]+")


def _check_api_key(api_key: Any) -> str:
    """The key as given, or a ConfigurationError that explains (and never quotes) it."""
    if not isinstance(api_key, str) or not api_key.strip():
        raise ConfigurationError(
            f"no RakerOne API key: set the {API_KEY_ENV} environment variable "
            "or pass api_key= to rakerone.Client"
        )
    if not _VISIBLE_ASCII.fullmatch(api_key):
        position, char = next((i, c) for i, c in enumerate(api_key) if not _VISIBLE_ASCII.fullmatch(c))
        raise ConfigurationError(
            f"the API key has an unusable character at position {position + 1} "
            f"(U+{ord(char):04X}): a key is visible ASCII only, without spaces or line "
            "breaks; check how it was copied or set"
        )
    return api_key


def _check_user_agent(user_agent: Any) -> Optional[str]:
    if user_agent is None:
        return None
    if (not isinstance(user_agent, str) or not re.fullmatch(r"[\x20-\x7e]+", user_agent)
            or user_agent != user_agent.strip()):
        raise ConfigurationError(
            "user_agent must be printable ASCII on one line, without surrounding spaces, "
            f"such as 'my-app/1.2'; got {user_agent!r}")
    return user_agent


def _is_loopback(host: Optional[str]) -> bool:
    """Only names that never leave the machine: ``localhost`` and loopback literals
    (``foo.localhost`` is resolved through DNS, so it does not count)."""
    if host is None:
        return False
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_base_url(base_url: Any, allow_insecure_http: bool) -> str:
    """Validate the API root URL and return it without a trailing slash."""
    if not isinstance(base_url, str) or not base_url.strip():
        raise ConfigurationError(f"base_url must be a URL such as {DEFAULT_BASE_URL!r}")
    try:
        parts = urlsplit(base_url.strip())
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        raise ConfigurationError(f"base_url {base_url!r} is not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not host:
        raise ConfigurationError(
            f"base_url must be an http(s) URL with a host, such as {DEFAULT_BASE_URL!r}; "
            f"got {_redact(base_url)!r}"
        )
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ConfigurationError(
            "base_url must not carry credentials, a query or a fragment; "
            f"pass the key as api_key= or {API_KEY_ENV}"
        )
    if parts.scheme == "http" and not _is_loopback(host) and not allow_insecure_http:
        raise ConfigurationError(
            f"refusing plain-http base_url to {host}: the API key would cross the network "
            "in clear; use https, or pass allow_insecure_http=True if you really mean it"
        )
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


def _path_segment(name: str, value: Any) -> str:
    """Percent-encode an id as exactly one path segment ("../x" cannot climb)."""
    if isinstance(value, uuid.UUID):
        value = str(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise ConfigurationError(f"{name} must be a str, int or UUID, not {type(value).__name__}")
    if not value.strip():
        raise ConfigurationError(f"{name} must not be empty")
    if value in (".", ".."):
        raise ConfigurationError(f"{name} {value!r} is not a valid id")
    return quote(value, safe="")


def _retry_after_seconds(headers: Mapping[str, str]) -> Optional[float]:
    """Read ``Retry-After`` as seconds from now: a number, or an HTTP date."""
    value = headers.get("Retry-After")
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=datetime.timezone.utc)
        seconds = (when - datetime.datetime.now(datetime.timezone.utc)).total_seconds()
    return max(0.0, seconds) if seconds == seconds else None  # NaN is no answer


def _api_error(
    status_code: int,
    headers: Mapping[str, str],
    content: bytes,
    what: str,
    response: Optional[requests.Response] = None,
    secrets: tuple[Optional[str], ...] = (),
) -> APIError:
    """The one place an error answer (HTTP or WebSocket handshake) becomes our error.

    Everything quoted from the server is redacted whole before it is shortened."""
    try:
        body = json.loads(content) if content else None
    except (ValueError, RecursionError):
        body = None
    error_response = body if isinstance(body, dict) else {}
    code = _optional_str(error_response.get("error"))
    issues = error_response.get("issues")
    issues = tuple(issues) if isinstance(issues, list) else ()
    request_id = headers.get("X-Request-Id") or headers.get("Request-Id")
    retry_after = _retry_after_seconds(headers)

    parts = [f"{what} failed with HTTP {status_code}" + (f" ({code})" if code else "")]
    detail = error_response.get("message") or error_response.get("detail")
    if isinstance(detail, str):
        parts.append(_excerpt(detail, 300, secrets))
    if issues:
        parts.append("issues: " + _excerpt(json.dumps(issues, default=str), 500, secrets))
    if body is None and content:
        content_type = headers.get("Content-Type", "unknown type")
        parts.append(f"the response was not JSON ({content_type}): {_excerpt(content, 200, secrets)!r}")
    if status_code == 429 and retry_after is not None:
        parts.append(f"retry after {retry_after:.0f} s")
    hint: Optional[str]
    if status_code >= 500:
        hint = "the RakerOne API had a problem; try again later"
    elif 300 <= status_code < 400:
        location = _excerpt(headers.get("Location", "elsewhere"), 200, secrets)
        hint = f"the API redirected to {location}, not followed; check the base URL"
    else:
        hint = _ERROR_HINTS.get(status_code)
    if hint:
        parts.append(hint)
    if request_id:
        parts.append(f"request id {_excerpt(request_id, 100, secrets)}")

    return _error_class(status_code)(
        _redact("; ".join(parts), *secrets),
        status_code=status_code,
        code=code,
        issues=issues,
        request_id=request_id,
        response=response,
        body=body,
        retry_after=retry_after,
    )


def _describe_network_error(exc: BaseException) -> str:
    """A short reason for a requests/urllib3 failure, without object reprs."""
    reason: Any = exc
    while reason.args and isinstance(reason.args[0], BaseException):
        reason = reason.args[0]
    reason = getattr(reason, "reason", reason)
    text = re.sub(r"<[^>]*object at 0x[0-9a-f]+>:?\s*", "", str(reason))  # urllib3 1.26's
    text = re.sub(r"\b\w*HTTPS?Connection\(host=[^)]*\):\s*", "", text)  # urllib3 2's
    return text or type(reason).__name__


def _backoff(attempt: int, base: float, cap: float) -> float:
    """Exponential backoff with full jitter: a random wait up to base * 2**attempt."""
    return random.uniform(0, min(cap, base * 2**attempt))


# -- Transport: deadlines and fork safety ----------------------------------------------
#
# Socket timeouts bound each read, not a whole response: a server that drips one byte
# every half second would hold a call for hours. So each attempt (an HTTP exchange, or
# opening a stream) is registered with a watchdog thread, which shuts its socket down
# if it is still running at its deadline; the blocked read then fails at once.


class _Attempt:
    """One bounded piece of network work, and how to cut it short at its deadline.

    ``sock`` is its socket, as our own connections report it the moment it exists
    (``connection.sock`` alone would miss a response read after http.client let go
    of the socket: any answer with ``Connection: close`` or without a length).
    Otherwise ``connection`` is whatever holds it: a WebSocket (``.sock``), or the
    response of a session's own adapter (urllib3 2.3+ can ``shutdown()`` it).
    """

    __slots__ = ("deadline", "sock", "connection", "expired", "reused")

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.sock: Optional[socket.socket] = None
        self.connection: Any = None
        self.expired = False
        self.reused = False  # sent on a pooled connection that had carried a request before

    def abort(self) -> None:
        """Called at the deadline: unblock whatever is reading (close alone would not)."""
        self.expired = True
        sock = self.sock if self.sock is not None else getattr(self.connection, "sock", None)
        try:
            if sock is not None:
                sock.shutdown(socket.SHUT_RDWR)
            elif callable(getattr(self.connection, "shutdown", None)):
                self.connection.shutdown()
        except (OSError, ValueError, RuntimeError):  # already closed, or already released
            pass


class _Watchdog:
    """A thread that aborts attempts still running at their deadline.

    One per client, started on first use, stopped by ``Client.close()`` or after
    ``IDLE_EXIT`` seconds with nothing to watch. Registering costs a lock, not a
    wake-up: deadlines only grow later, so the thread sleeps until the earliest one.
    """

    IDLE_EXIT = 5.0

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._attempts: set[_Attempt] = set()
        self._thread: Optional[threading.Thread] = None
        self._wake_at = float("inf")
        self._stopping = False
        self._pid = os.getpid()

    def watch(self, attempt: _Attempt) -> None:
        with self._condition:
            self._attempts.add(attempt)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="rakerone-watchdog", daemon=True)
                self._thread.start()
            elif attempt.deadline < self._wake_at:
                self._condition.notify()

    def unwatch(self, attempt: _Attempt) -> None:
        with self._condition:
            self._attempts.discard(attempt)

    def stop(self) -> None:
        if self._pid != os.getpid():
            return  # a forked child: the thread stayed in the parent, maybe holding the lock
        with self._condition:
            thread = self._thread
            self._stopping = thread is not None  # else the next thread would stop at once
            self._condition.notify()
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _run(self) -> None:
        with self._condition:
            busy_at = time.monotonic()
            while not self._stopping:
                now = time.monotonic()
                for attempt in [a for a in self._attempts if a.deadline <= now]:
                    self._attempts.discard(attempt)
                    attempt.abort()
                if self._attempts:
                    busy_at = now
                elif now - busy_at >= self.IDLE_EXIT:
                    break
                self._wake_at = min((a.deadline for a in self._attempts), default=busy_at + self.IDLE_EXIT)
                self._condition.wait(min(max(self._wake_at - now, 0.001), MAX_SECONDS))
            self._thread, self._stopping, self._wake_at = None, False, float("inf")


#: How many times this process is a fork()ed child of the one that imported us: a
#: stream opened before a fork must not be read, nor closed, from the child.
_forks = 0


def _count_fork() -> None:
    global _forks
    _forks += 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_count_fork)


def _forked_stream_error() -> StreamError:
    return StreamError("this stream was opened before fork(): a stream cannot be carried into a "
                       "child process; open a new one there (the parent's is left untouched)")


#: The attempt the current thread is making, for the connections below to report to.
_current = threading.local()


class _ReportingConnectionMixin:
    """Tells the current attempt which socket carries it: as soon as a new one is
    connected (before any proxy tunnel, which could drip too), and each time a
    pooled one is reused (then also that it is reused). A TLS handshake detaches the
    reported socket; CPython bounds the whole handshake by the socket's timeout."""

    _rakerone_used_sock: Optional[socket.socket] = None

    def _new_conn(self) -> socket.socket:
        sock: socket.socket = super()._new_conn()  # type: ignore[misc]
        _report_socket(sock, reused=False)
        return sock

    def request(self, *args: Any, **kwargs: Any) -> Any:
        sock = self.sock  # type: ignore[attr-defined]
        if sock is not None:  # connected: by urllib3 just now (TLS), or by an earlier request
            _report_socket(sock, reused=sock is self._rakerone_used_sock)
        try:
            return super().request(*args, **kwargs)  # type: ignore[misc]
        finally:
            self._rakerone_used_sock = self.sock  # type: ignore[attr-defined]


def _report_socket(sock: socket.socket, *, reused: bool) -> None:
    attempt = getattr(_current, "attempt", None)
    if attempt is not None:
        attempt.sock = sock
        attempt.reused = reused


class _ReportingHTTPConnection(_ReportingConnectionMixin, urllib3.connection.HTTPConnection):
    pass


class _ReportingHTTPSConnection(_ReportingConnectionMixin, urllib3.connection.HTTPSConnection):
    pass


# urllib3 declares ConnectionCls as its connection protocol, which pyright compares
# member by member with our subclasses; they are urllib3's own classes, extended.
class _ReportingHTTPConnectionPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _ReportingHTTPConnection  # pyright: ignore[reportAssignmentType]


class _ReportingHTTPSConnectionPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _ReportingHTTPSConnection  # pyright: ignore[reportAssignmentType]


_REPORTING_POOLS = {"http": _ReportingHTTPConnectionPool, "https": _ReportingHTTPSConnectionPool}


class _TransportAdapter(requests.adapters.HTTPAdapter):
    """requests' adapter for the client's own session: a pool big enough for 16
    threads, and connections that report to the watchdog, so a deadline also holds
    while connecting and waiting for headers. (A session you pass keeps its adapters;
    there the deadline holds from the response headers on.)"""

    def __init__(self) -> None:
        super().__init__(pool_maxsize=POOL_SIZE)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _REPORTING_POOLS

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if not proxy.lower().startswith("socks"):
            manager.pool_classes_by_scheme = _REPORTING_POOLS
        return manager


#: requests' cookie extraction, as Session.send does it (typed here: some releases
#: of requests leave it unannotated).
_extract_cookies: Callable[..., None] = requests.cookies.extract_cookies_to_jar


class _Redirected(Exception):
    """Internal: raised by a response hook, so requests never reads a 3xx body itself."""

    def __init__(self, response: requests.Response) -> None:
        super().__init__(response.status_code)
        self.response = response


def _stop_at_redirect(response: requests.Response, **_: Any) -> None:
    if 300 <= response.status_code < 400:
        raise _Redirected(response)


class _AttemptFailed(Exception):
    """Internal: one attempt failed with ``error``; may another one be made?"""

    def __init__(self, error: RakerOneError, cause: Optional[BaseException] = None, *,
                 retryable: bool = True, server_may_have_acted: bool = True) -> None:
        super().__init__(str(error))
        self.error = error
        self.cause = cause
        self.retryable = retryable
        self.server_may_have_acted = server_may_have_acted


def _root_cause(exc: BaseException) -> BaseException:
    """The innermost exception of a requests/urllib3 failure (they nest in args and .reason)."""
    while True:
        inner = exc.args[0] if exc.args and isinstance(exc.args[0], BaseException) else None
        inner = getattr(exc, "reason", None) if inner is None else inner
        if not isinstance(inner, BaseException) or inner is exc:
            return exc
        exc = inner


def _as_http(url: str) -> str:
    """A ws(s) URL as the http(s) URL that proxies and TLS settings are chosen for."""
    return "http" + url[2:] if url[:3].lower() in ("ws:", "wss") else url


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
    for literal in literals:
        if not _PATH_TEXT.fullmatch(literal):
            raise ConfigurationError(
                f"path {template!r} may hold only URL path characters and '{{}}' placeholders; "
                "pass the query as params= and ids as arguments")
    segments = [_path_segment(f"id {number}", value) for number, value in enumerate(ids, 1)]
    path = literals[0] + "".join(segment + literal for segment, literal in zip(segments, literals[1:]))
    if any(unquote(segment) in (".", "..") for segment in path.split("/")):
        raise ConfigurationError(f"path {template!r} must not hold '.' or '..' segments")
    return path


def _check_method(method: Any) -> str:
    if not isinstance(method, str) or not re.fullmatch(r"[A-Za-z]+", method):
        raise ConfigurationError(f"method must be an HTTP method such as 'GET' or 'POST', not {method!r}")
    return method.upper()


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

    One client may be shared by threads, and survives ``fork()``: a child process
    opens its own connections. Raises ConfigurationError for a missing key or an
    unusable setting.
    """

    def __init__(
        self,
        api_key: Optional[str] = None,
        *,
        base_url: Optional[str] = None,
        timeout: Timeout = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        verify: Union[bool, str, None] = None,
        session: Optional[requests.Session] = None,
        user_agent: Optional[str] = None,
        allow_insecure_http: bool = False,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    ) -> None:
        api_key = _check_api_key(api_key if api_key is not None else os.environ.get(API_KEY_ENV))
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ConfigurationError(f"max_retries must be a whole number >= 0, not {max_retries!r}")
        if not (verify is None or isinstance(verify, bool)
                or (isinstance(verify, str) and os.path.exists(verify))):
            raise ConfigurationError(f"verify must be True, False or an existing CA bundle path, not {verify!r}")
        if (isinstance(max_response_bytes, bool) or not isinstance(max_response_bytes, int)
                or max_response_bytes < 1):
            raise ConfigurationError(f"max_response_bytes must be a positive whole number, not {max_response_bytes!r}")
        if session is not None and not isinstance(session, requests.Session):
            raise ConfigurationError(f"session must be a requests.Session, not {type(session).__name__}")

        #: The API root, without a trailing slash.
        self.base_url = _check_base_url(
            base_url if base_url is not None else os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL,
            allow_insecure_http,
        )
        self.timeout = _check_timeout(timeout)
        self.max_retries = max_retries
        self.verify = verify
        self.max_response_bytes = max_response_bytes
        self.allow_insecure_http = bool(allow_insecure_http)
        self.user_agent = " ".join(
            filter(None, [_check_user_agent(user_agent), f"rakerone-python/{__version__}",
                          f"python/{platform.python_version()}", f"requests/{getattr(requests, '__version__', 'unknown')}"])
        )
        self._api_key = api_key
        self._auth = _BearerAuth(api_key)
        #: The key and the tickets minted lately: redacted from every text we quote.
        self._secrets: collections.deque[str] = collections.deque([api_key], maxlen=TICKETS_REMEMBERED + 1)
        self._headers = {"Accept": "application/json", "Accept-Encoding": "identity",
                         "User-Agent": self.user_agent}
        self._owns_session = session is None
        if session is None:
            session = requests.Session()
            session.mount("https://", _TransportAdapter())
            session.mount("http://", _TransportAdapter())
        self._session = session
        self._attempt_seconds = sum(self.timeout) if isinstance(self.timeout, tuple) else self.timeout
        self._pid = os.getpid()
        self._watchdog = _Watchdog()
        self._routes: dict[tuple[Any, ...], dict[str, Any]] = {}
        self._templates: dict[str, requests.PreparedRequest] = {}
        self._route(self.base_url)  # refuse a cleartext route through a remote proxy now
        # A seam for tests: retries and reconnects wait through this.
        self._sleep: Callable[[float], None] = time.sleep

    def __repr__(self) -> str:
        return f"<rakerone.Client base_url={getattr(self, 'base_url', None)!r}>"

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def close(self) -> None:
        """Stop the client's watchdog thread and close its HTTP session (not one you passed)."""
        self._watchdog.stop()
        if self._owns_session:
            self._session.close()

    # .. Endpoints .....................................................................

    def get_run(self, project_id: Id, run_id: Id) -> PlaybookRun:
        """Fetch one playbook run.

        Raises NotFoundError for an unknown project or run, AuthenticationError for a
        refused key, APIConnectionError when the API cannot be reached.
        """
        return self._get_run(self._run_path(project_id, run_id))

    def mint_run_ticket(self, project_id: Id, run_id: Id) -> WsTicket:
        """Mint a short-lived ticket for the run's WebSocket (see ``iter_run_events``)."""
        return self._mint_ticket(self._run_path(project_id, run_id) + "/ws-ticket")

    def mint_brief_ticket(self, project_id: Id, brief_id: Id) -> WsTicket:
        """Mint a short-lived ticket for the brief's shaping-log WebSocket."""
        return self._mint_ticket(self._brief_path(project_id, brief_id) + "/ws-ticket")

    def request(
        self,
        method: str,
        path: str,
        *ids: Id,
        params: Optional[Mapping[str, Any]] = None,
        json: Any = None,
    ) -> Any:
        """Call any API endpoint through this client's auth, retries and errors.

        ``path`` is relative to the base URL; each ``{}`` in it is filled with one of
        ``ids``, encoded as a single path segment. Returns the decoded JSON (None for an
        empty answer). POST and PATCH are resent only when the server cannot have
        acted on them (no connection, or 429/503).
        """
        method = _check_method(method)
        return self._request(method, _fill_path(path, ids), params=params, body=json)

    def wait_for_run(
        self,
        project_id: Id,
        run_id: Id,
        *,
        timeout: Optional[float] = None,
        on_update: Optional[Callable[[PlaybookRun], None]] = None,
    ) -> PlaybookRun:
        """Block until the run finishes, and return it (succeeded or not).

        Follows the run's events and confirms with ``get_run``; polls when the
        stream cannot be had. Network errors, timeouts, 5xx, 429 and lost streams
        are waited out with capped backoff; only answers that waiting cannot change
        (401, 403, 404, a bad setting) raise at once. After ``timeout`` seconds,
        raises WaitTimeoutError with the last run seen: no request, sleep or read
        runs past that deadline. ``on_update`` is called with each state seen.
        """
        _path_segment("project_id", project_id)
        _path_segment("run_id", run_id)
        if timeout is not None:
            _positive_number("timeout", timeout)
        if on_update is not None and not callable(on_update):
            raise ConfigurationError("on_update must be a function taking a PlaybookRun")
        return _RunWait(self, project_id, run_id, timeout, on_update).wait()

    def _get_run(self, path: str, deadline: Optional[float] = None) -> PlaybookRun:
        payload = self._request("GET", path, deadline=deadline)
        run = payload.get("run") if isinstance(payload, dict) else None
        parsed: PlaybookRun = self._parse(PlaybookRun.from_dict, run, f"GET {path}", payload)
        return parsed

    def _mint_ticket(self, path: str, deadline: Optional[float] = None) -> WsTicket:
        # Minting is documented as safe to repeat: a lost answer only wastes a ticket.
        ticket: WsTicket = self._parse(WsTicket.from_dict, self._request(
            "POST", path, deadline=deadline, resend_unsafe=True), f"POST {path}")
        self._secrets.append(ticket.ticket)
        return ticket

    # .. Requests ......................................................................

    @staticmethod
    def _run_path(project_id: Any, run_id: Any) -> str:
        return (f"/projects/{_path_segment('project_id', project_id)}"
                f"/playbook-runs/{_path_segment('run_id', run_id)}")

    @staticmethod
    def _brief_path(project_id: Any, brief_id: Any) -> str:
        return (f"/projects/{_path_segment('project_id', project_id)}"
                f"/briefs/{_path_segment('brief_id', brief_id)}")

    @staticmethod
    def _parse(from_dict: Callable[[Any], Any], data: Any, what: str, payload: Any = None) -> Any:
        try:
            return from_dict(data)
        except _WrongShape as exc:
            raise UnexpectedResponseError(
                f"{what} answered with an unexpected body: {exc}", status_code=200,
                body=payload if payload is not None else data,
            ) from None

    def _redact(self, text: str) -> str:
        return _redact(text, *self._secrets)

    def _request(self, method: str, path: str, *, params: Optional[Mapping[str, Any]] = None,
                 body: Any = None, deadline: Optional[float] = None,
                 resend_unsafe: bool = False) -> Any:
        """Send one API request with retries; return its decoded JSON body.

        ``deadline`` (a time.monotonic() instant) cuts attempts and retries short.
        """
        if self._pid != os.getpid():
            self._forget_parent_connections()
        what = f"{method} {path}"
        may_resend = resend_unsafe or method in IDEMPOTENT_METHODS
        for attempt in range(self.max_retries + 1):
            try:
                return self._attempt(method, path, what, params, body, deadline, may_resend)
            except _AttemptFailed as failed:
                failure = failed
            delay = self._retry_delay(attempt, failure, may_resend, deadline)
            if delay is None:
                error = failure.error
                if attempt and isinstance(error, APIConnectionError):
                    error.args = (f"{error} (after {attempt + 1} attempts)",)
                raise error from failure.cause
            # The message, not the error: a handler keeping records would keep the error's
            # response alive, and with it (urllib3 2) its pool and the pool's sockets.
            logger.info("%s: %s; retry %d of %d in %.2f s", what, str(failure.error), attempt + 1,
                        self.max_retries, delay)
            self._sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _retry_delay(self, attempt: int, failure: _AttemptFailed, may_resend: bool,
                     deadline: Optional[float]) -> Optional[float]:
        """How long to wait before the next attempt, or None to give up now."""
        if attempt >= self.max_retries or not failure.retryable:
            return None
        if failure.server_may_have_acted and not may_resend:
            return None
        retry_after = getattr(failure.error, "retry_after", None)
        if retry_after is None:
            delay = _backoff(attempt, RETRY_BACKOFF_BASE, RETRY_BACKOFF_CAP)
        elif retry_after <= RETRY_AFTER_CAP:
            delay = retry_after
        else:
            return None
        if deadline is not None and time.monotonic() + delay >= deadline:
            return None
        return delay

    def _attempt(self, method: str, path: str, what: str, params: Optional[Mapping[str, Any]],
                 body: Any, deadline: Optional[float], may_resend: bool) -> Any:
        """One exchange, bounded end to end by the watchdog; its decoded JSON body.

        Prepared and sent as requests does (see _prepare and _send), with redirects
        off, no compression, and the body read within the size limit.
        Every failure leaves as _AttemptFailed, built outside the except blocks so
        that no exception context can carry a secret along.
        """
        started = time.monotonic()
        attempt = _Attempt(started + self._attempt_seconds if deadline is None
                           else min(started + self._attempt_seconds, deadline))
        remaining = attempt.deadline - started
        if remaining <= 0:
            raise _AttemptFailed(APITimeoutError(f"{what}: no time left before the deadline"),
                                 retryable=False, server_may_have_acted=False)
        prepared = self._prepare(method, path, params, body)
        route = self._route(self.base_url)
        timeout: Timeout = ((min(self.timeout[0], remaining), min(self.timeout[1], remaining))
                            if isinstance(self.timeout, tuple) else min(self.timeout, remaining))
        failure: Optional[_AttemptFailed] = None
        response: Optional[requests.Response] = None
        content = b""
        self._watchdog.watch(attempt)
        _current.attempt = attempt
        try:
            try:
                response = self._send_unless_stale(prepared, timeout, route, attempt, may_resend, what)
            except _Redirected as redirected:
                response = redirected.response
            except requests.HTTPError as raised:  # a session hook's raise_for_status()
                if raised.response is None:
                    raise
                response = raised.response  # judged below like any other answer
            assert response is not None  # sent, or the answer of a redirect or a raising hook
            answer = response
            if attempt.sock is None:  # a session's own adapter: find the socket through the answer
                attempt.sock = getattr(getattr(answer.raw, "connection", None), "sock", None)
                attempt.connection = answer.raw  # urllib3 2.3+ can shut it down even then
            content = self._read_body(answer, what)
        except requests.RequestException as exc:
            failure = self._network_failure(exc, what, attempt)
        except _AttemptFailed as failed:
            failure = failed
        finally:
            _current.attempt = None
            self._watchdog.unwatch(attempt)
            if response is not None:
                response.close()
        if attempt.expired:  # the cut can read as the end of a body: whatever came, it is late
            failure = self._timed_out(what, failure.cause if failure is not None else None)
        if failure is not None:
            raise failure
        assert response is not None
        logger.debug("%s -> %s in %.0f ms", what, response.status_code, (time.monotonic() - started) * 1000)
        if response.status_code >= 300:
            raise self._status_failure(response, content, what)
        return self._decode(response, content, what)

    def _send_unless_stale(self, prepared: requests.PreparedRequest, timeout: Timeout, route: dict[str, Any],
                           attempt: _Attempt, may_resend: bool, what: str) -> requests.Response:
        """Send; once more at once, on another connection, if a request that is safe to
        repeat met a pooled connection the server had just closed (it went idle and
        the server timed it out as we sent): no answer came, and the attempt is not
        the caller's fault. Counted as no retry, it still keeps the attempt's deadline."""
        try:
            return self._send(prepared, timeout, route)
        except requests.ConnectionError as exc:
            root = _root_cause(exc)  # urllib3's ProtocolError("Connection aborted.", cause)
            closed = any(isinstance(part, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError))
                         for part in (root, *root.args))
            if not (closed and attempt.reused and may_resend and not attempt.expired):
                raise
        logger.debug("%s: the server had closed the pooled connection; resending on a new one", what)
        return self._send(prepared, timeout, route)

    def _prepare(self, method: str, path: str, params: Optional[Mapping[str, Any]],
                 body: Any) -> requests.PreparedRequest:
        """The request as requests prepares it: through your session's
        ``prepare_request`` (its headers, cookies, auth, params and hooks), or, for
        the client's own session, which nothing else can change, from a template it
        prepared once, with the cookies the API has set since."""
        url = self.base_url + path
        if not self._owns_session:
            prepared = self._session.prepare_request(requests.Request(
                method, url, headers=self._headers, auth=self._auth, params=params, json=body))
            prepared.hooks["response"].append(_stop_at_redirect)  # after the session's own hooks
            return prepared
        template = self._templates.get(method)
        if template is None:
            template = self._templates[method] = self._session.prepare_request(
                requests.Request(method, self.base_url, headers=self._headers, auth=self._auth))
            template.headers.pop("Cookie", None)  # the jar's cookies of each call are added below
        prepared = template.copy()
        prepared.prepare_url(url, params)
        if body is not None:
            prepared.prepare_body(None, None, body)
        if self._session.cookies:
            prepared.prepare_cookies(self._session.cookies)
        return prepared

    def _send(self, prepared: requests.PreparedRequest, timeout: Timeout,
              route: dict[str, Any]) -> requests.Response:
        """Your session's own ``send()`` (hooks, cookies, adapters, redirects off); the
        client's own session goes straight to its adapter and keeps the cookies the
        API sets: the same exchange, without ~40% of a requests call."""
        if not self._owns_session:
            return self._session.send(prepared, allow_redirects=False, stream=True, timeout=timeout, **route)
        response = self._session.get_adapter(prepared.url or self.base_url).send(
            prepared, stream=True, timeout=timeout, **route)
        _extract_cookies(self._session.cookies, prepared, response.raw)
        return response

    def _route(self, url: str) -> dict[str, Any]:
        """Proxies, TLS trust and client certificate for a URL, as requests itself
        merges the session's settings and the environment (an explicit ``verify=``
        wins). The HTTP calls and the streams both take their route from here; a
        cleartext one through a proxy beyond this machine is refused.

        The environment is read once per origin and session state, not per call:
        scanning it is a third of a plain requests call (see README, Performance).
        """
        session = self._session
        origin = "/".join(_as_http(url).split("/", 3)[:3])
        key = (origin, session.trust_env, tuple(sorted(session.proxies.items())),
               session.verify, session.cert, self.verify)
        route = self._routes.get(key)
        if route is None:
            merged = session.merge_environment_settings(origin, {}, None, self.verify, None)
            route = {"proxies": merged["proxies"], "verify": merged["verify"], "cert": merged["cert"]}
            self._check_cleartext_route(origin, route["proxies"])
            self._check_tls_files(route)
            if len(self._routes) >= 64:
                self._routes.clear()
            self._routes[key] = route
        return route

    @staticmethod
    def _check_tls_files(route: Mapping[str, Any]) -> None:
        """A CA bundle or client certificate that does not exist is a ConfigurationError
        here, not an OSError from deep inside requests."""
        verify, cert = route["verify"], route["cert"]
        files = [("CA bundle (verify, or REQUESTS_CA_BUNDLE)", verify if isinstance(verify, str) else None)]
        if isinstance(cert, str):
            files.append(("client certificate (cert)", cert))
        elif isinstance(cert, (tuple, list)) and len(cert) == 2:
            files += [("client certificate (cert)", cert[0]), ("client key (cert)", cert[1])]
        for what, name in files:
            if name and not os.path.exists(name):
                raise ConfigurationError(f"the {what} {name!r} does not exist")

    def _check_cleartext_route(self, origin: str, proxies: Mapping[str, str]) -> None:
        if not origin.startswith("http:") or self.allow_insecure_http:
            return
        proxy = requests.utils.select_proxy(origin, dict(proxies))
        proxy_host = proxy and urlsplit(proxy if "://" in proxy else "http://" + proxy).hostname
        if proxy and not _is_loopback(proxy_host):
            raise ConfigurationError(
                f"refusing to send credentials in clear to {urlsplit(origin).hostname} through the "
                f"proxy at {proxy_host}: use an https base URL, exempt the host with no_proxy, "
                "or pass allow_insecure_http=True if you really mean it")

    def _read_body(self, response: requests.Response, what: str) -> bytes:
        """The whole body, refused unread when compressed or over the size limit (an
        error page is only read as far as its message needs, and not at all when compressed)."""
        error_page = response.status_code >= 300
        encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            if error_page:
                response._content = b""  # left unread: the status says what went wrong (a proxy's gzip 503)
                return b""
            raise _AttemptFailed(UnexpectedResponseError(
                f"{what} answered HTTP {response.status_code} with a {encoding!r}-compressed body "
                "although the client asked for none; refusing to decompress it",
                status_code=response.status_code, response=response), retryable=False)
        limit = min(self.max_response_bytes, ERROR_PAGE_BYTES) if error_page else self.max_response_bytes
        length = response.headers.get("Content-Length", "")
        if length.isdigit() and int(length) > limit and not error_page:
            raise self._too_large(response, what, f"announced {int(length):,} bytes")
        chunks, size = [], 0
        for chunk in response.iter_content(64 * 1024):
            size += len(chunk)
            if size > limit:
                if error_page:
                    break  # an excerpt is all an error message needs
                raise self._too_large(response, what, f"sent more than {limit:,} bytes")
            chunks.append(chunk)
        content = b"".join(chunks)
        if length.isdigit() and len(content) < int(length) and not error_page:
            raise _AttemptFailed(APIConnectionError(
                f"{what}: the connection closed after {len(content):,} of {int(length):,} bytes"))
        response._content = content  # so response.content stays readable on errors
        return content

    def _too_large(self, response: requests.Response, what: str, how: str) -> _AttemptFailed:
        return _AttemptFailed(ResponseTooLargeError(
            f"{what}: the response {how}, over the client's max_response_bytes of "
            f"{self.max_response_bytes:,}; refused unread", status_code=response.status_code,
            response=response), retryable=False)

    def _network_failure(self, exc: requests.RequestException, what: str, attempt: _Attempt) -> _AttemptFailed:
        """The one place a requests/urllib3 failure becomes our error."""
        reason = _describe_network_error(exc)
        root = _root_cause(exc)
        if attempt.expired:
            return self._timed_out(what, exc)
        if isinstance(exc, requests.exceptions.ProxyError) and re.search(r"\b407\b", reason):
            return _AttemptFailed(ProxyAuthenticationError(
                f"{what}: the proxy refused to carry the request ({reason}); check the "
                "proxy's credentials (in https_proxy, or the session's proxies)"), exc, retryable=False)
        if isinstance(exc, requests.exceptions.SSLError):
            return _AttemptFailed(APIConnectionError(
                f"{what}: TLS failed ({reason}); check verify= and the base URL"), exc, retryable=False)
        if isinstance(root, urllib3.exceptions.NewConnectionError):  # refused, DNS: nothing was sent
            return _AttemptFailed(APIConnectionError(f"{what}: could not reach {self.base_url} ({reason})"),
                                  exc, server_may_have_acted=False)
        if isinstance(exc, requests.exceptions.ConnectTimeout):
            return _AttemptFailed(APITimeoutError(f"{what}: no connection within {self._attempt_seconds:g} s"),
                                  exc, server_may_have_acted=False)
        if isinstance(exc, requests.exceptions.Timeout) or isinstance(root, (socket.timeout, urllib3.exceptions.ReadTimeoutError)):
            return _AttemptFailed(APITimeoutError(f"{what} timed out after {self._attempt_seconds:g} s"), exc)
        return _AttemptFailed(APIConnectionError(f"{what}: the connection failed ({reason})"), exc)

    def _timed_out(self, what: str, cause: Optional[BaseException]) -> _AttemptFailed:
        return _AttemptFailed(APITimeoutError(
            f"{what} timed out after {self._attempt_seconds:g} s (the limit for connecting, "
            "sending and reading the whole answer)"), cause)

    def _status_failure(self, response: requests.Response, content: bytes, what: str) -> _AttemptFailed:
        status = response.status_code
        if status == 407:
            return _AttemptFailed(ProxyAuthenticationError(
                f"{what}: the proxy refused to carry the request (HTTP 407); check the proxy's "
                "credentials (in http_proxy, or the session's proxies)"), retryable=False)
        error = _api_error(status, response.headers, content, what, response, tuple(self._secrets))
        return _AttemptFailed(error, retryable=status in RETRYABLE_STATUSES,
                              server_may_have_acted=status not in NOT_ACTED_STATUSES)

    def _decode(self, response: requests.Response, content: bytes, what: str) -> Any:
        if not content.strip():
            return None
        try:
            return json.loads(content)
        except (ValueError, RecursionError) as exc:
            problem = ("nested too deeply" if isinstance(exc, RecursionError)
                       else f"not JSON ({response.headers.get('Content-Type', 'unknown type')})")
            error = UnexpectedResponseError(
                f"{what} answered HTTP {response.status_code} with a body that is {problem}: "
                f"{_excerpt(content, 200, tuple(self._secrets))!r}",
                status_code=response.status_code, response=response)
        raise _AttemptFailed(error)

    def _forget_parent_connections(self) -> None:
        """In a forked child: drop the pooled connections inherited from the parent
        (closing our copies only; the parent's sockets are not shut down) and its
        watchdog, so the child never reads an answer meant for its parent."""
        for adapter in self._session.adapters.values():
            managers = [getattr(adapter, "poolmanager", None), *getattr(adapter, "proxy_manager", {}).values()]
            for manager in managers:
                if manager is not None:
                    manager.clear()
        self._watchdog = _Watchdog()
        self._pid = os.getpid()

    # .. Streams .......................................................................

    def iter_run_events(
        self,
        project_id: Id,
        run_id: Id,
        *,
        max_outage: float = DEFAULT_MAX_OUTAGE,
        ping_interval: float = 20.0,
        ping_timeout: float = 10.0,
        idle_timeout: Optional[float] = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        reconnect: Any = _NOT_GIVEN,
        max_reconnects: Any = _NOT_GIVEN,
    ) -> Generator[Event, None, None]:
        """Yield the run's live events, each exactly once, until the server ends the stream.

        Every connection mints a fresh ticket; an event whose id was already yielded is
        skipped. Drops and server restarts reconnect, however many attempts it takes,
        until ``max_outage`` seconds pass without a working connection (0: never
        reconnect). A silent peer is pinged after ``ping_interval`` seconds and dropped
        after ``ping_timeout`` more. Raises StreamDisconnectedError when the outage
        budget runs out, MessageTooLargeError for a message over ``max_message_bytes``,
        StreamError for a frame that is not JSON, StreamTimeoutError after
        ``idle_timeout`` seconds without an event, and AuthenticationError /
        PermissionDeniedError / NotFoundError when refused. ``reconnect`` and
        ``max_reconnects`` are deprecated (``reconnect=False`` is ``max_outage=0``).
        """
        path = self._run_path(project_id, run_id)
        settings = _StreamSettings.checked(
            max_outage=max_outage, max_message_bytes=max_message_bytes, ping_interval=ping_interval,
            ping_timeout=ping_timeout, idle_timeout=idle_timeout, reconnect=reconnect,
            max_reconnects=max_reconnects)
        return self._iter_events(path, lambda: self.mint_run_ticket(project_id, run_id), settings)

    def iter_brief_events(
        self,
        project_id: Id,
        brief_id: Id,
        *,
        max_outage: float = DEFAULT_MAX_OUTAGE,
        ping_interval: float = 20.0,
        ping_timeout: float = 10.0,
        idle_timeout: Optional[float] = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        reconnect: Any = _NOT_GIVEN,
        max_reconnects: Any = _NOT_GIVEN,
    ) -> Generator[Event, None, None]:
        """Yield the brief's shaping-log entries live; behaves as ``iter_run_events``."""
        path = self._brief_path(project_id, brief_id)
        settings = _StreamSettings.checked(
            max_outage=max_outage, max_message_bytes=max_message_bytes, ping_interval=ping_interval,
            ping_timeout=ping_timeout, idle_timeout=idle_timeout, reconnect=reconnect,
            max_reconnects=max_reconnects)
        return self._iter_events(path, lambda: self.mint_brief_ticket(project_id, brief_id), settings)

    def _iter_events(self, path: str, mint_ticket: Callable[[], WsTicket], settings: _StreamSettings,
                     ) -> Generator[Event, None, None]:
        seen = _RecentIds(DEDUPE_WINDOW)
        reconnects = _Reconnects(path, settings)
        minted: list[WsTicket] = []  # the ticket of the current attempt, once minted

        def mint() -> WsTicket:
            minted.append(mint_ticket())
            return minted[-1]

        born = _forks
        while True:
            if _forks != born:
                raise _forked_stream_error()
            minted.clear()
            try:
                ws = self._open_socket(path, mint, settings.deadline)
            except _ConnectionLost as lost:
                self._wait_to_reconnect(path, reconnects, lost)
                continue
            except AuthenticationError as refused:
                if not minted:
                    raise  # minting was refused: the key's problem, and its message
                reconnects.after_refused_ticket(_TicketRefused(f"HTTP {refused.status_code} at the upgrade"))
                continue
            reconnects.opened()
            reader = _ConnectionReader(ws, settings, self._secrets)
            try:
                yield from reader.events(seen)
                return
            except (_ConnectionLost, _TicketRefused) as exc:
                ended: Union[_ConnectionLost, _TicketRefused] = exc
            finally:
                _close_socket(ws, polite=_forks == reader.born, deadline=settings.deadline)
            reconnects.closed(reader.new_events)
            if isinstance(ended, _TicketRefused):
                reconnects.after_refused_ticket(ended)
            else:
                self._wait_to_reconnect(path, reconnects, ended)

    def _wait_to_reconnect(self, path: str, reconnects: _Reconnects, lost: _ConnectionLost) -> None:
        """Sleep before the next connection, or raise StreamDisconnectedError when out of budget."""
        delay = reconnects.delay_after(lost)
        deadline = reconnects.settings.deadline
        if deadline is not None and time.monotonic() + delay >= deadline:
            raise StreamTimeoutError(f"stream {path}: the deadline passed while reconnecting ({lost})")
        logger.info("stream %s: %s; reconnecting in %.2f s", path, str(lost), delay)
        self._sleep(delay)

    def _open_socket(self, path: str, mint_ticket: Callable[[], WsTicket],
                     deadline: Optional[float] = None) -> Any:
        """Mint a ticket and open the WebSocket, all within the client's timeout (and
        ``deadline``); retryable failures raise _ConnectionLost."""

        if self._pid != os.getpid():
            self._forget_parent_connections()
        try:
            ticket = mint_ticket()
        except (APIConnectionError, ServerError, RateLimitError) as exc:
            if isinstance(exc.__cause__, requests.exceptions.SSLError):
                raise  # a certificate problem: another attempt would fail the same way
            raise _ConnectionLost(f"could not mint a ticket: {exc}", exc, exc.retry_after
                                  if isinstance(exc, APIError) else None) from None
        url = self._socket_url(path, ticket)
        route = self._route(url)
        logger.debug("stream %s: connecting to %s", path, self._redact(url))
        started = time.monotonic()
        attempt = _Attempt(started + self._attempt_seconds if deadline is None
                           else min(started + self._attempt_seconds, deadline))
        try:  # for wss only: loading a CA bundle takes ~20 ms
            context = _socket_ssl_context(route) if url.startswith("wss:") else None
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            raise StreamError(f"stream {path}: cannot use the CA bundle or client certificate "
                              f"({self._redact(str(exc))}); check verify= and cert") from None
        timeout = max(attempt.deadline - started, 0.001)
        ws = _read_ahead_websocket_class()(sslopt={"context": context}, skip_utf8_validation=True,
                                           enable_multithread=False)
        ws.settimeout(timeout)
        attempt.connection = ws
        self._watchdog.watch(attempt)
        _current.attempt = attempt  # for the tunnel's connection to report its socket
        try:
            proxy = _socket_proxy_options(url, route["proxies"])
            sock = None
            if proxy.get("proxy_type") == "http":  # our tunnel: websocket-client only upgrades it
                sock = attempt.sock = _open_tunnel(url, proxy, context, timeout)  # shut down from now on
                proxy = {}
            ws.connect(url, redirect_limit=0, header={"User-Agent": self.user_agent}, socket=sock, **proxy)
        except Exception as exc:  # noqa: BLE001 - each kind is sorted out below
            failure: Optional[BaseException] = self._socket_failure(exc, path, url, attempt)
        else:
            failure = None
        finally:
            _current.attempt = None
            self._watchdog.unwatch(attempt)
        if failure is not None or attempt.expired:
            ws.shutdown()
            raise failure or _ConnectionLost("the WebSocket handshake took longer than the client's timeout")
        return ws

    def _socket_failure(self, exc: Exception, path: str, url: str, attempt: _Attempt) -> BaseException:
        """The one place a failure to open a stream becomes our error (redacted, with
        no cause attached, as websocket-client's messages may quote the ticket)."""
        import websocket

        if attempt.expired:
            return _ConnectionLost(f"the WebSocket handshake took longer than its {self._attempt_seconds:g} s timeout")
        if isinstance(exc, websocket.WebSocketBadStatusException):
            body = getattr(exc, "resp_body", None) or b""
            error = _api_error(exc.status_code, requests.structures.CaseInsensitiveDict(
                getattr(exc, "resp_headers", None) or {}), body if isinstance(body, bytes) else body.encode(),
                f"WebSocket upgrade {path}/ws", secrets=tuple(self._secrets))
            if exc.status_code in RETRYABLE_STATUSES:
                return _ConnectionLost(str(error), error, error.retry_after)
            return error
        reason = self._redact(_describe_network_error(exc))
        if isinstance(exc, OSError) and reason.startswith("Tunnel connection failed: 407"):  # http.client's
            return ProxyAuthenticationError(
                f"stream {path}: the proxy refused to carry the stream ({reason}); check the "
                "proxy's credentials (in https_proxy, or the session's proxies)")
        if isinstance(exc, ssl.SSLCertVerificationError):  # retrying cannot fix a certificate
            return StreamError(f"stream {path}: TLS failed ({exc.verify_message}); check verify=")
        if isinstance(exc, ValueError):  # websocket-client's word for an unusable URL
            return StreamError(f"stream {path}: cannot connect to {self._redact(url)!r} ({reason})")
        if isinstance(exc, (OSError, websocket.WebSocketException, urllib3.exceptions.HTTPError)):
            return _ConnectionLost(f"could not connect ({reason})")  # HTTPError: opening our tunnel
        if isinstance(exc, RakerOneError):
            return exc
        return StreamError(f"stream {path}: could not connect ({reason})")  # python-socks' ProxyError

    def _socket_url(self, path: str, ticket: WsTicket) -> str:
        """The ticket's ``wsUrl``, or else ``<base>/…/ws?ticket=`` with ws(s); never a
        cleartext URL where the base URL would not be allowed one."""
        if ticket.ws_url is None:
            url = f"{self.base_url}{path}/ws?ticket={quote(ticket.ticket, safe='')}"
        else:
            url = ticket.ws_url
        parts = urlsplit(url)
        scheme = _SOCKET_SCHEMES.get(parts.scheme.lower())
        if scheme is None or not parts.hostname:
            raise StreamError(f"the ticket's wsUrl is not a ws(s) URL: {self._redact(url)!r}")
        if scheme == "ws" and self.base_url.startswith("https:"):
            raise StreamError("refusing the ticket's wsUrl: it downgrades https to plain ws, "
                              "which would send the ticket and events in clear")
        if scheme == "ws" and not _is_loopback(parts.hostname) and not self.allow_insecure_http:
            raise StreamError(f"refusing the ticket's plain-ws wsUrl to {parts.hostname}: the ticket would "
                              "cross the network in clear; pass allow_insecure_http=True if you really mean it")
        return urlunsplit((scheme,) + tuple(parts[1:]))


def _socket_ssl_context(route: Mapping[str, Any]) -> ssl.SSLContext:
    """The TLS context for a stream on the route requests chose: urllib3's defaults, the
    same trust (CA bundle, or none with verify=False) and the same client certificate."""
    verify, cert = route["verify"], route["cert"]
    context = urllib3.util.ssl_.create_urllib3_context(
        cert_reqs=ssl.CERT_NONE if verify is False else ssl.CERT_REQUIRED)
    context.check_hostname = verify is not False  # urllib3 1.26 leaves it off (it checks names itself)
    if verify is not False:
        bundle = requests.certs.where() if verify in (True, None) else verify  # type: ignore[attr-defined]
        if os.path.isdir(bundle):
            context.load_verify_locations(capath=bundle)
        else:
            context.load_verify_locations(cafile=bundle)
    if isinstance(cert, str):
        context.load_cert_chain(cert)
    elif isinstance(cert, (tuple, list)) and len(cert) == 2:
        context.load_cert_chain(cert[0], cert[1])
    return context


def _open_tunnel(url: str, proxy: Mapping[str, Any], context: Optional[ssl.SSLContext],
                 timeout: float) -> socket.socket:
    """A socket to the URL's host through an HTTP proxy's CONNECT tunnel, with TLS
    (``context``) for wss, for websocket-client to upgrade. urllib3's connection opens
    it, so the watchdog holds the socket from its first byte (websocket-client's own
    tunnel shows its socket only once the proxy has answered, however slowly it does)."""
    parts = urlsplit(url)
    headers = {}
    if "http_proxy_auth" in proxy:
        headers = urllib3.util.make_headers(proxy_basic_auth=":".join(proxy["http_proxy_auth"]))
    connection = _ReportingHTTPConnection(proxy["http_proxy_host"], proxy["http_proxy_port"], timeout=timeout)
    connection.set_tunnel(parts.hostname or "", parts.port or (80 if context is None else 443), headers)
    try:
        connection.connect()
        sock: socket.socket = connection.sock
        return context.wrap_socket(sock, server_hostname=parts.hostname) if context is not None else sock
    except BaseException:
        connection.close()
        raise


def _socket_proxy_options(url: str, proxies: Mapping[str, str]) -> dict[str, Any]:
    """websocket-client proxy options for exactly the proxy requests would use for this
    URL, or for none: websocket-client must not decide again from the environment or
    its own defaults (a session with ``trust_env=False`` means no environment at all).
    An ``http`` proxy's options go to _open_tunnel instead.

    websocket-client reads ``http_no_proxy`` only along with a proxy host, so "no
    proxy" is a host it never contacts with every host exempt, and a chosen proxy
    comes with an exemption list that matches no host.
    """
    proxy = requests.utils.select_proxy(_as_http(url), dict(proxies))
    if not proxy:
        return {"http_proxy_host": "unused.invalid", "http_proxy_port": 9, "http_no_proxy": ["*"]}
    parts = urlsplit(proxy if "://" in proxy else "http://" + proxy)
    if parts.scheme not in _PROXY_TYPES:
        raise StreamError(f"websocket-client cannot use a {parts.scheme!r} proxy; "
                          f"use one of {', '.join(_PROXY_TYPES)}")
    options: dict[str, Any] = {
        "proxy_type": parts.scheme,
        "http_proxy_host": parts.hostname,
        "http_proxy_port": parts.port or 80,
        "http_no_proxy": ["unused.invalid"],
    }
    if parts.username:
        options["http_proxy_auth"] = (unquote(parts.username), unquote(parts.password or ""))
    return options


# -- Streams ---------------------------------------------------------------------------


@attrs.frozen
class _StreamSettings:
    ping_interval: float
    ping_timeout: float
    idle_timeout: Optional[float]
    #: Seconds without a working connection before the stream gives up; 0: never reconnect.
    max_outage: float = DEFAULT_MAX_OUTAGE
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    #: Deprecated: failed attempts in a row before giving up; None: only max_outage counts.
    max_reconnects: Optional[int] = None
    #: A time.monotonic() instant at which the stream gives up (for ``rakerone run wait``).
    deadline: Optional[float] = None

    @classmethod
    def checked(cls, *, max_outage: Any, max_message_bytes: Any, ping_interval: Any,
                ping_timeout: Any, idle_timeout: Any, reconnect: Any, max_reconnects: Any) -> _StreamSettings:
        if (isinstance(max_outage, bool) or not isinstance(max_outage, (int, float))
                or not 0 <= max_outage < float("inf")):
            raise ConfigurationError(f"max_outage must be a finite number of seconds >= 0, not {max_outage!r}")
        if isinstance(max_message_bytes, bool) or not isinstance(max_message_bytes, int) or max_message_bytes < 1:
            raise ConfigurationError(f"max_message_bytes must be a whole number >= 1, not {max_message_bytes!r}")
        if reconnect is not _NOT_GIVEN:
            if not isinstance(reconnect, bool):
                raise ConfigurationError(f"reconnect must be True or False, not {reconnect!r}")
            _warn_deprecated("reconnect", "reconnect=False is max_outage=0, and reconnecting is the default")
            max_outage = max_outage if reconnect else 0
        if max_reconnects is _NOT_GIVEN:
            max_reconnects = None
        else:
            if isinstance(max_reconnects, bool) or not isinstance(max_reconnects, int) or max_reconnects < 0:
                raise ConfigurationError(f"max_reconnects must be a whole number >= 0, not {max_reconnects!r}")
            _warn_deprecated("max_reconnects", "give the stream a time budget instead: max_outage=<seconds>")
        return cls(
            max_outage=float(max_outage),
            max_message_bytes=max_message_bytes,
            max_reconnects=max_reconnects,
            ping_interval=_positive_number("ping_interval", ping_interval),
            ping_timeout=_positive_number("ping_timeout", ping_timeout),
            idle_timeout=None if idle_timeout is None else _positive_number("idle_timeout", idle_timeout),
        )


def _warn_deprecated(option: str, instead: str) -> None:
    import warnings

    # stacklevel 4: the user's call of iter_run_events, through checked() and here.
    warnings.warn(f"the {option} option of rakerone streams is deprecated: {instead}",
                  DeprecationWarning, stacklevel=4)


class _ConnectionLost(Exception):
    """Internal: this connection is gone, but another one may work."""

    def __init__(self, reason: str, cause: Optional[BaseException] = None,
                 retry_after: Optional[float] = None) -> None:
        super().__init__(reason)
        self.cause = cause
        self.retry_after = min(retry_after or 0.0, RETRY_AFTER_CAP)


class _TicketRefused(Exception):
    """Internal: the server refused the WebSocket ticket (close 4401, or 401 at the upgrade)."""


class _Reconnects:
    """Decides when a stream reconnects and when it gives up.

    A stream gives up after ``max_outage`` seconds without a working connection,
    however many attempts that takes. A connection works once it has delivered a new
    event or stayed open CONNECTION_WORKS_AFTER seconds; that ends the outage and
    resets the backoff. A refused ticket gets one fresh ticket, not two in a row.
    """

    def __init__(self, path: str, settings: _StreamSettings) -> None:
        self._path = path
        self.settings = settings
        self._outage_started: Optional[float] = time.monotonic()  # None: a connection works
        self._failures = 0
        self._has_worked = False
        self._ticket_refused = False  # the last refusal had no working connection after it
        self._opened_at = 0.0

    def opened(self) -> None:
        self._opened_at = time.monotonic()

    def closed(self, new_events: int) -> None:
        """The connection ended; note whether it worked. Only new events clear a
        refused ticket: a server that accepts each ticket and refuses it a moment
        later must not get a fresh one every half second for ever."""
        if new_events or time.monotonic() - self._opened_at >= CONNECTION_WORKS_AFTER:
            self._outage_started = None
            self._failures = 0
            self._has_worked = True
        if new_events:
            self._ticket_refused = False

    def delay_after(self, lost: _ConnectionLost) -> float:
        """Seconds to wait before the next attempt; StreamDisconnectedError when out of budget."""
        now = time.monotonic()
        if self._outage_started is None:
            self._outage_started = now
        self._failures += 1
        settings, outage = self.settings, now - self._outage_started
        left = settings.max_outage - outage
        if settings.max_outage == 0:
            why = "reconnecting is off: max_outage=0"
        elif settings.max_reconnects is not None and self._failures > settings.max_reconnects:
            why = f"max_reconnects={settings.max_reconnects}"
        elif left <= 0:
            why = f"max_outage={settings.max_outage:g} s"
        elif lost.retry_after > left:
            why = f"the server asked to retry after {lost.retry_after:g} s, beyond max_outage"
        else:
            # The exponent stops at 16: the cap is reached long before, and 2**1024 overflows.
            backoff = _backoff(min(self._failures - 1, 16), RECONNECT_BACKOFF_BASE, RECONNECT_BACKOFF_CAP)
            return min(max(backoff, lost.retry_after), left)
        raise StreamDisconnectedError(
            f"stream {self._path} ended after {self._failures} failed attempt(s) in a row, "
            f"{outage:.1f} s without a working connection ({why}): {lost}"
        ) from lost.cause

    def after_refused_ticket(self, refused: _TicketRefused) -> None:
        """Allow one fresh ticket after a stream worked; else raise AuthenticationError."""
        if self._has_worked and not self._ticket_refused:
            self._ticket_refused = True
            logger.info("stream %s: %s; minting a fresh ticket", self._path, str(refused))
            return
        when = "even freshly minted, twice in a row" if self._ticket_refused else "right after minting it"
        raise AuthenticationError(
            f"stream {self._path}: the server refused the WebSocket ticket ({refused}) {when}; "
            "the API key was accepted when minting it, so check that nothing between here and "
            "the API alters the socket URL, and the server's ticket lifetime",
            status_code=401,
        )


class _RecentIds:
    """The last ``size`` event ids, oldest first: bounded memory for exactly-once delivery.

    An id longer than DEDUPE_DIGEST_ABOVE characters is kept as a 16-byte digest, so
    the window's memory does not depend on how long the server's ids are.
    """

    def __init__(self, size: int) -> None:
        self._ids: collections.OrderedDict[Union[str, bytes], None] = collections.OrderedDict()
        self._size = size

    def add(self, event_id: str) -> bool:
        """Remember the id; False when it was already there."""
        key: Union[str, bytes] = event_id
        if len(event_id) > DEDUPE_DIGEST_ABOVE:
            import hashlib

            key = hashlib.blake2b(event_id.encode("utf-8", "surrogatepass"), digest_size=16).digest()
        ids = self._ids
        if key in ids:
            return False
        ids[key] = None
        if len(ids) > self._size:
            ids.popitem(last=False)
        return True


_OPCODE_TEXT, _OPCODE_BINARY, _OPCODE_CLOSE = 0x1, 0x2, 0x8
_SOCKET_SCHEMES = {"ws": "ws", "wss": "wss", "http": "ws", "https": "wss"}
_PROXY_TYPES = ("http", "socks4", "socks4a", "socks5", "socks5h")


_raw_decode = json.JSONDecoder().raw_decode


def _decode_json(payload: bytes, secrets: Iterable[Optional[str]] = ()) -> Any:
    """Decode a frame's UTF-8 JSON exactly as ``json.loads`` would, or raise StreamError.

    ``raw_decode`` skips ``json.loads``'s two layers and two regular expressions
    (~0.7 us of a 200 B event); anything it does not take whole (surrounding
    whitespace, an error) goes to ``json.loads`` of the text for its answer.
    """
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
    raise StreamError(f"received {problem}: {_excerpt(bytes(payload), 80, tuple(secrets))!r}")


class _ConnectionReader:
    """Reads one connection's events, keeping it alive with pings and deadlines.

    The socket wakes the reader at the nearest deadline (ping due, pong due, idle, the
    caller's deadline), also in the middle of a frame or while frames keep coming. The
    wake-up time is set when state changes, never per frame: a wake-up that comes early
    (an event pushed the ping later) only sets the next one.
    """

    def __init__(self, ws: Any, settings: _StreamSettings, secrets: Iterable[Optional[str]]) -> None:
        self._ws = ws
        self._settings = settings
        #: The fork() count of the process that opened the connection (see _forks).
        self.born = _forks
        #: What to redact from the server's text we quote (the key, the tickets).
        self._secrets = secrets
        self._last_frame_at = self._last_event_at = time.monotonic()
        self._ping_sent_at: Optional[float] = None
        #: How many events this connection yielded (not seen before).
        self.new_events = 0
        ws.max_message_bytes = settings.max_message_bytes
        ws.set_wake_time(self._next_wake())

    def events(self, seen: _RecentIds) -> Generator[Event, None, None]:
        """Yield the events not ``seen`` before; return on close 1000, raise
        _ConnectionLost on a drop. ``new_events`` counts what was yielded."""
        import websocket

        # The per-frame path: one JSON decode, no logging, names bound once.
        recv_data_frame, monotonic, add_id = self._ws.recv_data_frame, time.monotonic, seen.add
        from_message, now, utc = Event.from_message, datetime.datetime.now, datetime.timezone.utc
        while True:
            try:
                opcode, frame = recv_data_frame(True)
            except websocket.WebSocketTimeoutException:
                self._on_silence()
                continue
            except (OSError, websocket.WebSocketException) as exc:
                raise _ConnectionLost(f"connection dropped ({type(exc).__name__}: {exc})", exc) from None
            if opcode == _OPCODE_TEXT or opcode == _OPCODE_BINARY:
                message = _decode_json(frame.data, self._secrets)
                frame = None  # free the payload before the loop body runs
                self._last_frame_at = self._last_event_at = monotonic()
                self._ping_sent_at = None
                event = from_message(message, now(utc))
                if event.id is None or add_id(event.id):
                    self.new_events += 1
                    yield event
                    if _forks != self.born:
                        raise _forked_stream_error()
            elif opcode == _OPCODE_CLOSE:
                _on_close_frame(frame.data, self._secrets)
                return
            else:  # ping or pong: the peer is alive
                self._last_frame_at = now_monotonic = monotonic()
                self._ping_sent_at = None
                self._check_deadlines(now_monotonic)
                self._ws.set_wake_time(self._next_wake())

    def _on_silence(self) -> None:
        """Nothing complete for a while: ping, declare the peer dead, or time out idle."""
        import websocket

        now = time.monotonic()
        self._check_deadlines(now)
        settings = self._settings
        if self._ping_sent_at is not None:
            if now - self._ping_sent_at >= settings.ping_timeout:
                half_read = " (a frame was still arriving)" if self._ws.is_mid_frame else ""
                self._ws.shutdown()
                raise _ConnectionLost(f"no answer to a ping within {settings.ping_timeout:g} s{half_read}")
        elif now - self._last_frame_at >= settings.ping_interval:
            try:
                self._ws.ping()
            except (OSError, websocket.WebSocketException) as exc:
                raise _ConnectionLost(f"connection dropped sending a ping ({type(exc).__name__}: {exc})",
                                      exc) from None
            self._ping_sent_at = now
        self._ws.set_wake_time(self._next_wake())

    def _check_deadlines(self, now: float) -> None:
        idle_timeout = self._settings.idle_timeout
        if idle_timeout is not None and now - self._last_event_at >= idle_timeout:
            raise StreamTimeoutError(f"no event for {idle_timeout:g} s (idle_timeout)")
        if self._settings.deadline is not None and now >= self._settings.deadline:
            raise StreamTimeoutError("the deadline passed")

    def _next_wake(self) -> float:
        settings = self._settings
        if self._ping_sent_at is None:
            due = self._last_frame_at + settings.ping_interval
        else:
            due = self._ping_sent_at + settings.ping_timeout
        if settings.idle_timeout is not None:
            due = min(due, self._last_event_at + settings.idle_timeout)
        if settings.deadline is not None:
            due = min(due, settings.deadline)
        return due


#: A frame header as read: first byte, payload length, mask key (None: unmasked).
_FrameHeader = tuple[int, int, Optional[bytes]]


@functools.cache
def _read_ahead_websocket_class() -> type:
    """websocket-client's WebSocket with a faster, bounded frame reader.

    Built on first use, since websocket is imported lazily.
    """
    import websocket

    ABNF, TimedOut = websocket.ABNF, websocket.WebSocketTimeoutException

    class ReadAheadWebSocket(websocket.WebSocket):
        """Overrides websocket-client's public ``recv_frame()`` (and extends ``__init__``
        for its buffer); no private method.

        websocket-client reads each frame in three small reads (header, length,
        payload); this reads the socket READ_AHEAD_BYTES at a time and cuts frames out
        of that buffer (small events stream ~1.8x faster than through websocket-client's
        reads; a payload longer than the buffer holds is read straight into its own).
        Reading the header first lets ``max_message_bytes`` refuse a message before its
        payload is read. Frames are websocket-client's ``ABNF``, checked by its
        ``validate()``; continuation frames, pings, pongs and the close handshake stay
        websocket-client's.

        A read never waits past the wake-up time (``set_wake_time``), even inside a
        frame whose bytes trickle in; a frame cut short by a timeout is kept and
        resumed by the next call, as websocket-client does.
        """

        #: The largest message accepted, fragments included; more is refused with close 1009.
        max_message_bytes = DEFAULT_MAX_MESSAGE_BYTES

        def __init__(self, *, skip_utf8_validation: bool = False, **options: Any) -> None:
            super().__init__(skip_utf8_validation=skip_utf8_validation, **options)
            self._skip_utf8_validation = skip_utf8_validation
            self._buffer = bytearray(READ_AHEAD_BYTES)
            self._view = memoryview(self._buffer)
            self._start = self._end = 0  # the bytes read and not yet parsed: _buffer[_start:_end]
            self._header: Optional[_FrameHeader] = None  # (first byte, length, mask key) of a frame being read
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
            """Raise WebSocketTimeoutException from reads at this time.monotonic() instant."""
            self._wake_at = instant
            self.settimeout(max(instant - time.monotonic(), 0.001))

        def recv_frame(self) -> Any:
            """The next frame. A whole, final, unmasked text or binary frame already in
            the buffer is cut out here; everything else goes the general way."""
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
                    # A bytearray, as websocket-client's own frames are not: joining fragments
                    # then appends in place, and ABNF and validate() take it as they do bytes.
                    frame = ABNF(1, 0, 0, 0, first & 0x0F, 0, cast(bytes, buffer[payload_start:payload_end]))
                    frame.validate(self._skip_utf8_validation)
                    return frame
            return self._recv_any_frame()

        def _recv_any_frame(self) -> Any:
            if self._header is None:
                self._header = self._read_header()
            first, length, mask_key = self._header
            payload: Union[bytes, bytearray] = self._read_payload(length)
            self._header = None
            opcode = first & 0x0F
            if mask_key is not None:  # servers must not mask; websocket-client unmasks anyway
                payload = ABNF.mask(mask_key, bytes(payload))
            elif opcode >= _OPCODE_CLOSE:
                payload = bytes(payload)  # as websocket-client's close and pong code expect
            frame = ABNF(first >> 7, first >> 6 & 1, first >> 5 & 1, first >> 4 & 1, opcode,
                         int(mask_key is not None), cast(bytes, payload))
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
                    raise websocket.WebSocketProtocolException(
                        f"a control frame of {length:,} bytes (at most 125 are allowed)")
                return
            size = length if opcode else self._message_bytes + length  # opcode 0: a continuation
            if size > self.max_message_bytes:
                try:
                    self.send_close(websocket.STATUS_MESSAGE_TOO_BIG, b"message too big")
                except (OSError, websocket.WebSocketException):
                    pass  # the peer is gone already: nothing more to refuse
                so_far = "" if opcode else " so far"
                raise MessageTooLargeError(
                    f"the server sent a message of {size:,} bytes{so_far}, over max_message_bytes="
                    f"{self.max_message_bytes:,}; it was refused unread (close 1009). "
                    "Raise max_message_bytes if such messages are expected"
                )
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

        def _read_payload(self, length: int) -> bytearray:
            if self._payload is None:
                start, available = self._start, self._end - self._start
                if available >= length:
                    self._start = start + length
                    return self._buffer[start:start + length]
                self._payload = bytearray(length)
                self._payload[:available] = self._view[start:self._end]
                self._payload_view = memoryview(self._payload)
                self._filled, self._start, self._end = available, 0, 0
            payload, view = self._payload, self._payload_view
            assert payload is not None and view is not None
            while self._filled < length:
                self._filled += self._read_into(view[self._filled:])
            view.release()  # or the payload could not grow when websocket-client joins fragments
            self._payload = self._payload_view = None
            return payload

        def _read_into(self, view: memoryview) -> int:
            """One read, with websocket-client's exceptions for a timeout or a closed socket.

            No read waits past the wake-up time: neither bytes trickling into a frame, nor
            whole frames that keep coming without an event for the caller (a server
            replaying events already seen) may hold off the heartbeat and the deadlines.
            """
            sock = self.sock
            if sock is None:
                raise websocket.WebSocketConnectionClosedException("socket is already closed.")
            if self._wake_at is not None:
                left = self._wake_at - time.monotonic()
                if left <= 0:
                    raise TimedOut("the wake-up time came before the next frame was complete")
                sock.settimeout(left)
            try:
                count = sock.recv_into(view)
            except socket.timeout as exc:
                raise TimedOut(str(exc) or "timed out") from None
            if not count:
                self.connected = False
                raise websocket.WebSocketConnectionClosedException("Connection to remote host was lost.")
            return count

    return ReadAheadWebSocket


def _on_close_frame(payload: bytes, secrets: Iterable[Optional[str]] = ()) -> None:
    """Act on the server's close: return on 1000, else raise what the code means."""
    code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
    reason = _excerpt(payload[2:], 123, tuple(secrets)) if len(payload) > 2 else ""  # 123 bytes at most
    described = f"server closed the stream with {code}" + (f" ({reason})" if reason else "")
    if code == 1000:
        logger.debug("%s", described)
        return
    status = CLOSE_CODE_STATUS.get(code)
    if status is None and 4000 <= code < 5000:
        status = code - 4000  # application codes read as 4000 + an HTTP status
    if code in RECONNECT_CLOSE_CODES or status in RETRYABLE_STATUSES:
        raise _ConnectionLost(described)
    if status == 401:
        raise _TicketRefused(f"close {code}" + (f": {reason}" if reason else ""))
    if status is not None and 400 <= status < 600:
        error_class = _error_class(status)
        raise error_class(described, status_code=status)
    raise StreamError(described)


def _close_socket(ws: Any, polite: bool = True, deadline: Optional[float] = None) -> None:
    """Say goodbye (close 1000) if the socket is still open, and release it at once.
    The wait for the server's answer ends by CLOSE_TIMEOUT, and by the deadline. In a
    forked child, the socket is the parent's too: it is only let go of."""
    if ws.connected and polite:
        wait = CLOSE_TIMEOUT if deadline is None else max(0.0, min(CLOSE_TIMEOUT, deadline - time.monotonic()))
        ws.set_wake_time(time.monotonic() + wait)  # a half-read frame cannot hold it longer
        ws.close(status=1000, timeout=wait)
    ws.shutdown()


# -- Waiting for a run -----------------------------------------------------------------

WAIT_POLL_FIRST = 1.0  # seconds between get_run calls when polling, doubling...
WAIT_POLL_CAP = 15.0  # ...up to this
WAIT_REFRESH_EVERY = 1.0  # at most one get_run per this many seconds while events flow
#: A quiet stream is left and the run re-checked after this many seconds without an event.
WAIT_QUIET_RECHECK = 60.0


def _is_final(error: RakerOneError) -> bool:
    """Whether waiting longer cannot change this answer (a refused key, an unknown
    run, a bad setting); everything else is trouble worth waiting out."""
    if isinstance(error, (ConfigurationError, ProxyAuthenticationError)):
        return True
    if isinstance(error, APIError) and error.status_code is not None:
        return 400 <= error.status_code < 500 and error.status_code not in (408, 429)
    return isinstance(error, StreamError) and not isinstance(error, StreamDisconnectedError)


class _RunWait:
    """Waits for a run to finish: follows its events, confirms with get_run, polls
    when the stream cannot be had, and waits out transient trouble until the deadline."""

    def __init__(self, client: Client, project_id: Id, run_id: Id, timeout: Optional[float],
                 on_update: Optional[Callable[[PlaybookRun], None]]) -> None:
        self._client = client
        self._path = client._run_path(project_id, run_id)
        self._run_id = run_id
        self._timeout = timeout
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._on_update = on_update
        self._last_run: Optional[PlaybookRun] = None
        self._last_error: Optional[RakerOneError] = None
        self._stream_refused = False

    def wait(self) -> PlaybookRun:
        delay = WAIT_POLL_FIRST
        while True:
            run = self._check()
            if run is not None and run.is_terminal:
                return run
            if run is not None and not self._stream_refused:
                run = self._follow_stream()
                if run is not None:
                    return run
                delay = WAIT_POLL_FIRST
            retry_after = getattr(self._last_error, "retry_after", None) or 0.0
            self._pause(max(delay, retry_after))
            delay = min(delay * 2, WAIT_POLL_CAP)

    def _check(self) -> Optional[PlaybookRun]:
        """The run now, or None after transient trouble (kept in ``_last_error``)."""
        try:
            run = self._client._get_run(self._path, self._deadline)
        except RakerOneError as error:
            self._note_trouble(error)
            return None
        self._last_run, self._last_error = run, None
        if self._on_update is not None:
            self._on_update(run)
        return run

    def _note_trouble(self, error: RakerOneError) -> None:
        if _is_final(error):
            raise error
        logger.info("waiting for run %s: %s; trying again", self._run_id, str(error))
        self._last_error = error
        self._check_deadline()

    def _follow_stream(self) -> Optional[PlaybookRun]:
        """Re-check the run as events arrive (at most once a second) and when the
        stream ends or fails; the finished run, or None to go on polling."""
        client = self._client
        settings = _StreamSettings(ping_interval=20.0, ping_timeout=10.0, idle_timeout=WAIT_QUIET_RECHECK,
                                   deadline=self._deadline)
        events = client._iter_events(self._path, lambda: client._mint_ticket(self._path + "/ws-ticket",
                                                                            self._deadline), settings)
        last_check = time.monotonic()
        try:
            while self._next_event(events):
                if time.monotonic() - last_check >= WAIT_REFRESH_EVERY:
                    last_check = time.monotonic()
                    run = self._check()
                    if run is not None and run.is_terminal:
                        return run
        finally:
            events.close()
        self._check_deadline()
        run = self._check()
        return run if run is not None and run.is_terminal else None

    def _next_event(self, events: Iterator[Event]) -> bool:
        """Whether an event arrived; False once the stream ended, went quiet or failed."""
        try:
            next(events)
            return True
        except StopIteration:
            return False
        except StreamTimeoutError:  # quiet for a while, or the deadline: check the run
            return False
        except (AuthenticationError, PermissionDeniedError, NotFoundError, StreamError) as error:
            if isinstance(error, StreamDisconnectedError):
                self._note_trouble(error)
            else:
                logger.info("waiting for run %s: no event stream (%s); polling instead", self._run_id, str(error))
                self._stream_refused = True
            return False
        except RakerOneError as error:
            self._note_trouble(error)
            return False

    def _pause(self, seconds: float) -> None:
        if self._deadline is not None:
            seconds = min(seconds, self._deadline - time.monotonic())
        if seconds > 0:
            self._client._sleep(seconds)
        self._check_deadline()

    def _check_deadline(self) -> None:
        if self._deadline is None or time.monotonic() < self._deadline:
            return
        if self._last_run is None:
            message = (f"gave up waiting for run {self._run_id} after {self._timeout:g} s: "
                       f"the API could not be reached ({self._last_error})")
        else:
            message = f"run {self._run_id} still {self._last_run.status or 'unfinished'} after {self._timeout:g} s"
        raise WaitTimeoutError(message,
                               self._last_run, self._last_error)


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


def wait_for_run(project_id: Id, run_id: Id, *, timeout: Optional[float] = None) -> PlaybookRun:
    """Wait for a run to finish with a client built from the environment; see
    ``Client.wait_for_run``."""
    with Client() as client:
        return client.wait_for_run(project_id, run_id, timeout=timeout)


def request(method: str, path: str, *ids: Id, params: Optional[Mapping[str, Any]] = None,
            json: Any = None) -> Any:
    """Call any API path with a client built from the environment; see ``Client.request``."""
    with Client() as client:
        return client.request(method, path, *ids, params=params, json=json)


def iter_run_events(project_id: Id, run_id: Id, **options: Any) -> Generator[Event, None, None]:
    """Follow a run's events with a client built from the environment; options as
    for ``Client.iter_run_events``. The client is closed when the loop ends."""
    return _iter_with_own_client(lambda client: client.iter_run_events(project_id, run_id, **options))


def iter_brief_events(project_id: Id, brief_id: Id, **options: Any) -> Generator[Event, None, None]:
    """Follow a brief's shaping log with a client built from the environment."""
    return _iter_with_own_client(lambda client: client.iter_brief_events(project_id, brief_id, **options))


def _iter_with_own_client(
        start: Callable[[Client], Generator[Event, None, None]]) -> Generator[Event, None, None]:
    client = Client()
    try:
        events = start(client)  # checks the arguments now, not at the first next()
    except BaseException:
        client.close()
        raise
    return _closing_client(client, events)


def _closing_client(client: Client, events: Iterator[Event]) -> Generator[Event, None, None]:
    with client:
        yield from events


# -- Command line ----------------------------------------------------------------------

#: Exit codes, the same for every command (see README).
EXIT_OK = 0
EXIT_RUN_UNSUCCESSFUL = 1
EXIT_USAGE = 2
EXIT_CONFIGURATION = 3  # configuration or authentication, the API's or a proxy's
EXIT_NOT_FOUND = 4
EXIT_API_ERROR = 5
EXIT_NETWORK = 6  # connection or network timeout: worth a retry later
EXIT_SOFTWARE = 70  # a bug in rakerone (sysexits' EX_SOFTWARE)
EXIT_OUTPUT = 74  # the output could not be written (sysexits' EX_IOERR)
EXIT_DEADLINE = 124  # as timeout(1)
EXIT_INTERRUPTED = 130


class _OutputFailed(Exception):
    """Internal: stdout could not be written (closed, full, or the reader left)."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause) or type(cause).__name__)
        self.reader_left = isinstance(cause, BrokenPipeError)


class _UsageError(Exception):
    """Internal: a command's arguments are unusable; exit 2 with this message."""


def main(argv: Optional[list[str]] = None) -> int:
    """Run the ``rakerone`` command; return its exit code."""
    import argparse

    parser = _command_parser(argparse)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on bad usage, 0 for --help / --version
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    handler: Callable[[Client, Any], int] = args.handler
    if args.verbose:
        log_handler = logging.StreamHandler(sys.stderr)
        log_handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        logger.addHandler(log_handler)
        logger.setLevel(logging.DEBUG)
    secrets: Any = [os.environ.get(API_KEY_ENV)]
    try:
        with Client(base_url=args.base_url, timeout=args.request_timeout) as client:
            secrets = client._secrets
            return handler(client, args)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except _OutputFailed as failed:
        return _output_failed(failed, quiet=failed.reader_left and handler in _STREAMING_COMMANDS)
    except _UsageError as exc:
        _say(f"rakerone: {exc}")
        return EXIT_USAGE
    except RakerOneError as exc:
        if args.verbose:
            logger.exception("failed")
        _say(f"rakerone: {exc}")
        if handler is _cmd_api and isinstance(exc, APIError) and exc.body is not None:
            _say(_redact(json.dumps(exc.body, ensure_ascii=False), *secrets))
        return _exit_code(exc)
    except Exception as exc:  # noqa: BLE001 - a bug must never pass for a run's outcome
        if args.verbose:
            logger.exception("internal error")
        _say(f"rakerone: internal error, please report it: {type(exc).__name__}: "
             f"{_redact(str(exc), *secrets)}")
        return EXIT_SOFTWARE


def _exit_code(error: RakerOneError) -> int:
    if isinstance(error, (ConfigurationError, AuthenticationError, PermissionDeniedError,
                          ProxyAuthenticationError)):
        return EXIT_CONFIGURATION
    if isinstance(error, NotFoundError):
        return EXIT_NOT_FOUND
    if isinstance(error, (APIConnectionError, StreamDisconnectedError)):
        return EXIT_NETWORK
    if isinstance(error, WaitTimeoutError):
        return EXIT_NETWORK if error.run is None else EXIT_DEADLINE
    return EXIT_API_ERROR


def _say(line: str) -> None:
    """One line on stderr, whatever the locale; never an error of its own."""
    try:
        print(line, file=sys.stderr, flush=True)
    except (OSError, ValueError, AttributeError):
        pass


def _output_failed(failed: _OutputFailed, quiet: bool) -> int:
    """End after stdout failed: quietly (exit 0) when a reader such as ``head`` left
    an event stream, else with EXIT_OUTPUT."""
    try:  # nothing more may reach the broken stdout, not even at interpreter exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    except OSError:
        pass
    if quiet:
        return EXIT_OK
    _say(f"rakerone: could not write the output ({failed})")
    return EXIT_OUTPUT


def _write(text: str) -> None:
    """Write UTF-8 to stdout (JSON stays valid JSON in an ASCII or C locale) and flush."""
    try:
        stdout = sys.stdout.buffer  # AttributeError when stdout was closed (None) at start
        stdout.write(text.encode("utf-8"))
        stdout.flush()
    except (OSError, ValueError, AttributeError) as exc:
        raise _OutputFailed(exc) from None


def _print_json(value: Any) -> None:
    if value is not None:
        _write(json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def _print_json_lines(events: Iterator[Event]) -> int:
    dumps, write = json.dumps, _write
    for event in events:
        write(dumps(event.raw, ensure_ascii=False, separators=(",", ":")) + "\n")
    return EXIT_OK


def _cmd_run_get(client: Client, args: Any) -> int:
    _print_json(client.get_run(args.project_id, args.run_id).raw)
    return EXIT_OK


def _cmd_run_ticket(client: Client, args: Any) -> int:
    _print_json(client.mint_run_ticket(args.project_id, args.run_id).raw)
    return EXIT_OK


def _cmd_brief_ticket(client: Client, args: Any) -> int:
    _print_json(client.mint_brief_ticket(args.project_id, args.brief_id).raw)
    return EXIT_OK


def _cmd_run_events(client: Client, args: Any) -> int:
    return _print_json_lines(client.iter_run_events(args.project_id, args.run_id))


def _cmd_brief_events(client: Client, args: Any) -> int:
    return _print_json_lines(client.iter_brief_events(args.project_id, args.brief_id))


def _cmd_run_wait(client: Client, args: Any) -> int:
    progress = _ProgressLine() if sys.stderr is not None and sys.stderr.isatty() else None
    try:
        run = client.wait_for_run(args.project_id, args.run_id, timeout=args.deadline,
                                  on_update=progress.show if progress else None)
    finally:
        if progress:
            progress.clear()
    outcome = EXIT_OK if run.succeeded else EXIT_RUN_UNSUCCESSFUL
    try:
        _print_json(run.raw)
    except _OutputFailed as failed:  # the run's outcome still decides the exit code
        _output_failed(failed, quiet=failed.reader_left)
    return outcome


def _cmd_api(client: Client, args: Any) -> int:
    path, _, query = args.path.partition("?")
    path = "/" + path.lstrip("/")
    base_path = urlsplit(client.base_url).path
    if base_path and (path + "/").startswith(base_path + "/"):
        path = path[len(base_path):] or "/"  # "/api/projects" under ".../api" is "/projects"
    fields = dict(_field(text) for text in args.field)
    body = _read_input(args.input) if args.input is not None else None
    method = (args.method or ("POST" if fields or args.input is not None else "GET")).upper()
    params = dict(parse_qsl(query, keep_blank_values=True))
    if method in ("GET", "HEAD", "DELETE") and args.input is None:
        params.update(fields)
    elif fields:
        if body is not None and not isinstance(body, dict):
            raise _UsageError("-f fields can only be added to a JSON object given with --input")
        body = {**(body or {}), **fields}
    _check_method(method)
    _fill_path(path, ())  # checks the path: relative, no dot segments, no placeholders
    _print_json(client._request(method, path, params=params or None, body=body))
    return EXIT_OK


def _field(text: str) -> tuple[str, str]:
    key, equals, value = text.partition("=")
    if not equals or not key:
        raise _UsageError(f"-f takes key=value, not {text!r}")
    return key, value


def _read_input(name: str) -> Any:
    try:
        if name == "-":
            text = sys.stdin.read() if sys.stdin is not None else ""
        else:
            with open(name, encoding="utf-8") as file:
                text = file.read()
        return json.loads(text)
    except (OSError, UnicodeDecodeError) as exc:
        problem = f"cannot read --input {name}: {exc}"
    except (ValueError, RecursionError) as exc:
        problem = f"--input {name} is not JSON: {exc}"
    raise _UsageError(problem)


_STREAMING_COMMANDS = (_cmd_run_events, _cmd_brief_events)


class _ProgressLine:
    """One live status line on a terminal's stderr: status, steps done, elapsed."""

    def __init__(self) -> None:
        self._started = time.monotonic()

    def show(self, run: PlaybookRun) -> None:
        done = sum(1 for step in run.steps if step.finished_at or
                   _normalise_status(step.status) in SUCCESS_STATUSES | FAILURE_STATUSES)
        elapsed = int(time.monotonic() - self._started)
        print(f"\r\033[K{run.status or 'unknown'} · steps {done}/{len(run.steps)} done · "
              f"{elapsed // 60:02d}:{elapsed % 60:02d} elapsed", end="", file=sys.stderr, flush=True)

    def clear(self) -> None:
        print("\r\033[K", end="", file=sys.stderr, flush=True)


def _command_parser(argparse: Any) -> Any:
    parser = argparse.ArgumentParser(
        prog="rakerone",
        description=f"Query RakerOne runs and follow their events. The API key is read from {API_KEY_ENV}.",
        epilog="exit codes: 0 ok, 1 run finished unsuccessfully, 2 usage, 3 configuration or "
               "authentication, 4 not found, 5 other API error, 6 connection or network timeout, "
               "70 internal error, 74 output could not be written, 124 run wait deadline passed, "
               "130 interrupted",
    )
    parser.add_argument("--version", action="version", version=f"rakerone {__version__}")
    parser.add_argument("--base-url", help=f"API root (default ${BASE_URL_ENV}, else {DEFAULT_BASE_URL})")
    parser.add_argument("--timeout", dest="request_timeout", type=float, default=DEFAULT_TIMEOUT,
                        metavar="S", help="seconds each HTTP attempt may take (default %(default)s)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens on stderr (redacted)")
    nouns = parser.add_subparsers(dest="noun", required=True, metavar="{run,brief,api}")
    for noun, noun_help, id_name, commands in (
        ("run", "playbook runs", "run_id", (
            ("get", _cmd_run_get, "print the run as JSON, exactly as the server sent it"),
            ("ticket", _cmd_run_ticket, "mint a WebSocket ticket and print it as JSON"),
            ("events", _cmd_run_events, "print one JSON line per event as it arrives"),
            ("wait", _cmd_run_wait, "wait until the run finishes; print it; exit 0 if it succeeded, 1 if not"),
        )),
        ("brief", "briefs", "brief_id", (
            ("ticket", _cmd_brief_ticket, "mint a WebSocket ticket and print it as JSON"),
            ("events", _cmd_brief_events, "print one JSON line per shaping-log entry as it arrives"),
        )),
    ):
        verbs = nouns.add_parser(noun, help=noun_help).add_subparsers(dest="verb", required=True)
        for verb, handler, help_text in commands:
            command = verbs.add_parser(verb, help=help_text, description=help_text)
            command.add_argument("project_id", metavar="PROJECT")
            command.add_argument(id_name, metavar=noun.upper())
            command.set_defaults(handler=handler)
            if handler is _cmd_run_wait:
                command.add_argument("--timeout", dest="deadline", type=float, metavar="S",
                                     help="give up after S seconds: exit 124 (6 if the API was never reached)")
    api_help = "call any API path with this client's key, retries and errors; print the JSON answer"
    api = nouns.add_parser("api", help=api_help, description=api_help + " (GET, or POST with -f/--input)")
    api.add_argument("path", metavar="PATH", help="relative to the base URL, e.g. /projects/p1/briefs")
    api.add_argument("-X", "--method", help="HTTP method (default GET, or POST when fields or input are given)")
    api.add_argument("-f", "--field", action="append", default=[], metavar="KEY=VALUE",
                     help="a string field: the JSON body's, or the query's for GET")
    api.add_argument("--input", metavar="FILE", help="send this JSON file as the body ('-' for stdin)")
    api.set_defaults(handler=_cmd_api)
    return parser


if __name__ == "__main__":
    raise SystemExit(main())
