"""The ``rakerone`` command: a thin user of rakerone's public API (exit codes: EXIT_CODES)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Callable, Optional
from urllib.parse import parse_qsl, urlsplit

if TYPE_CHECKING:
    import rakerone

#: The exit codes, the same for every command, as ``rakerone --help`` lists them.
EXIT_CODES = ("0 ok, 1 run finished unsuccessfully, 2 usage, 3 configuration or authentication, 4 not found, "
              "5 other API error, 6 connection or network timeout, 70 internal error, 74 output could not be "
              "written, 124 run wait's deadline passed, 130 interrupted")
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
    """stdout could not be written (closed, full, or the reader left)."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause) or type(cause).__name__)
        self.reader_left = isinstance(cause, BrokenPipeError)


class _UsageError(Exception):
    """A command's arguments are unusable; exit 2 with this message."""


def main(argv: Optional[list[str]] = None) -> int:
    """Run the ``rakerone`` command; return its exit code."""
    try:
        args = _command_parser().parse_args(argv)
        import rakerone  # after the arguments: --help, --version and usage errors need none of it
    except SystemExit as exc:  # argparse exits 2 on bad usage, 0 for --help / --version
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return _run(rakerone, args)


def _run(rakerone: Any, args: Any) -> int:
    handler: Callable[[rakerone.Client, Any], int] = args.handler
    if args.verbose:
        log_handler = logging.StreamHandler(sys.stderr)
        log_handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        rakerone.logger.addHandler(log_handler)
        rakerone.logger.setLevel(logging.DEBUG)
    client: Optional[rakerone.Client] = None
    timeout = {} if args.request_timeout is None else {"timeout": args.request_timeout}
    try:
        with rakerone.Client(base_url=args.base_url, **timeout) as opened:
            client = opened
            return handler(opened, args)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except _OutputFailed as failed:
        return _output_failed(failed, quiet=failed.reader_left and handler in _STREAMING_COMMANDS)
    except _UsageError as exc:
        _say(f"rakerone: {exc}")
        return EXIT_USAGE
    except rakerone.RakerOneError as exc:
        if args.verbose:
            rakerone.logger.exception("failed")
        _say(f"rakerone: {exc}")
        if handler is _cmd_api and isinstance(exc, rakerone.APIError) and exc.body is not None:
            _say(json.dumps(exc.body, ensure_ascii=False))  # redacted by the client
        return _exit_code(exc)
    except Exception as exc:  # noqa: BLE001 - a bug must never pass for a run's outcome
        if args.verbose:
            rakerone.logger.exception("internal error")
        text = f"{type(exc).__name__}: {exc}"
        key = os.environ.get(rakerone.API_KEY_ENV)
        text = client.redact(text) if client is not None else text.replace(key, "***") if key else text
        _say(f"rakerone: internal error, please report it: {text}")
        return EXIT_SOFTWARE


def _exit_code(error: rakerone.RakerOneError) -> int:
    import rakerone

    if isinstance(error, (rakerone.ConfigurationError, rakerone.AuthenticationError,
                          rakerone.PermissionDeniedError, rakerone.ProxyAuthenticationError)):
        return EXIT_CONFIGURATION
    if isinstance(error, rakerone.NotFoundError):
        return EXIT_NOT_FOUND
    if isinstance(error, (rakerone.APIConnectionError, rakerone.StreamDisconnectedError)):
        return EXIT_NETWORK
    if isinstance(error, rakerone.WaitTimeoutError):
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


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _json(value: Any, **options: Any) -> str:
    """JSON that UTF-8 can carry: a lone surrogate (half an emoji, as JavaScript may send
    it) stays the ``\\uXXXX`` escape it came as."""
    text = json.dumps(value, ensure_ascii=False, **options)
    return _LONE_SURROGATE.sub(lambda match: f"\\u{ord(match.group()):04x}", text) + "\n"


def _print_json(value: Any) -> None:
    if value is not None:
        _write(_json(value, indent=2))


def _print_json_lines(events: Iterator[rakerone.Event]) -> int:
    for event in events:
        _write(_json(event.raw, separators=(",", ":")))
    return EXIT_OK


def _cmd_run_get(client: rakerone.Client, args: Any) -> int:
    _print_json(client.get_run(args.project_id, args.run_id).raw)
    return EXIT_OK


def _cmd_run_ticket(client: rakerone.Client, args: Any) -> int:
    _print_json(client.mint_run_ticket(args.project_id, args.run_id).raw)
    return EXIT_OK


def _cmd_brief_ticket(client: rakerone.Client, args: Any) -> int:
    _print_json(client.mint_brief_ticket(args.project_id, args.brief_id).raw)
    return EXIT_OK


def _cmd_run_events(client: rakerone.Client, args: Any) -> int:
    return _print_json_lines(client.iter_run_events(args.project_id, args.run_id))


def _cmd_brief_events(client: rakerone.Client, args: Any) -> int:
    return _print_json_lines(client.iter_brief_events(args.project_id, args.brief_id))


def _cmd_run_wait(client: rakerone.Client, args: Any) -> int:
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


def _cmd_api(client: rakerone.Client, args: Any) -> int:
    path, _, query = args.path.partition("?")
    path = "/" + path.lstrip("/")
    base_path = urlsplit(client.base_url).path
    if base_path and (path + "/").startswith(base_path + "/"):
        path = path[len(base_path):] or "/"  # "/api/projects" under ".../api" is "/projects"
    fields = [_field(text) for text in args.field]
    body = _read_input(args.input) if args.input is not None else None
    method = (args.method or ("POST" if fields or args.input is not None else "GET")).upper()
    params = parse_qsl(query, keep_blank_values=True)  # a name may repeat, as given
    if method in ("GET", "HEAD", "DELETE") and args.input is None:
        params += fields
    elif fields:
        if body is not None and not isinstance(body, dict):
            raise _UsageError("-f fields can only be added to a JSON object given with --input")
        body = {**(body or {}), **dict(fields)}
    try:
        answer = client.request(method, path, params=params or None, json=body)
    except ValueError as exc:  # a ConfigurationError of the path, method or body: the arguments'
        raise _UsageError(str(exc)) from None
    _print_json(answer)
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
        return json.loads(text)  # NaN and infinity pass here; the client refuses them (exit 2)
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

    def show(self, run: rakerone.PlaybookRun) -> None:
        done = sum(1 for step in run.steps if step.is_terminal)
        elapsed = int(time.monotonic() - self._started)
        print(f"\r\033[K{run.status or 'unknown'} · steps {done}/{len(run.steps)} done · "
              f"{elapsed // 60:02d}:{elapsed % 60:02d} elapsed", end="", file=sys.stderr, flush=True)

    def clear(self) -> None:
        print("\r\033[K", end="", file=sys.stderr, flush=True)


def _version() -> str:
    """rakerone's ``__version__``, read from its source: importing it (requests and all) to
    print one string would take several times as long as Python's own start."""
    import importlib.util

    spec = importlib.util.find_spec("rakerone")
    with open(spec.origin if spec and spec.origin else "", encoding="utf-8") as source:
        return next(line.split('"')[1] for line in source if line.startswith("__version__ = "))


class _Parser(argparse.ArgumentParser):
    """argparse's parser, with usage errors on one line like every other error."""

    def error(self, message: str) -> Any:
        self.exit(EXIT_USAGE, f"rakerone: {message} (see {self.prog} --help)\n")


class _VersionAction(argparse.Action):
    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        print(f"rakerone {_version()}")
        parser.exit()


def _command_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="rakerone",
        description="Query RakerOne runs and follow their events. The API key is read from RAKERONE_API_KEY.",
        epilog=f"exit codes: {EXIT_CODES}",
    )
    parser.add_argument("--version", action=_VersionAction, nargs=0, help="show the version and exit")
    parser.add_argument("--base-url", help="API root (default $RAKERONE_BASE_URL, else production)")
    parser.add_argument("--timeout", dest="request_timeout", type=float, metavar="S",
                        help="seconds each HTTP attempt may take (default: the client's, 30)")
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
