"""A user's code, type-checked by CI against the installed rakerone; it is never run.

.ci/run checks it with ``mypy --strict`` from outside the repository, so the only
rakerone mypy can find is the installed module, and with the setting README gives
users: ``follow_untyped_imports = True`` for the ``rakerone`` module alone (a
single-module distribution cannot ship a ``py.typed`` marker).
"""

from __future__ import annotations

import contextlib
import datetime
from typing import Optional

import rakerone


def report(project_id: str, run_id: str) -> int:
    """Print a run and its live events until it finishes; return an exit status."""
    try:
        with rakerone.Client(timeout=(3.05, 30.0), max_retries=2) as client:
            run: rakerone.PlaybookRun = client.get_run(project_id, run_id)
            started: Optional[datetime.datetime] = run.started_at
            print(run.status, started, [step.name for step in run.steps], run.raw.get("metadata"))
            events = client.iter_run_events(project_id, run_id, idle_timeout=600.0)
            for event in events:
                print(event.type, event.id, event.data, event.received_at.isoformat())
                if event.type == "run.finished":
                    break
            events.close()  # leaving early: close 1000 and release the socket now
            return 0 if client.get_run(project_id, run_id).succeeded else 1
    except rakerone.RateLimitError as exc:
        retry_after: Optional[float] = exc.retry_after
        print(f"rate limited; retry after {retry_after} s")
    except rakerone.NotFoundError as exc:
        status: Optional[int] = exc.status_code
        print(f"no such run (HTTP {status}, request id {exc.request_id})")
    except rakerone.APIError as exc:
        code: Optional[str] = exc.code
        print(f"the API refused: {code}: {exc}")
    except (rakerone.APIConnectionError, rakerone.StreamDisconnectedError) as exc:
        print(f"could not reach RakerOne, try later: {exc}")
    except rakerone.ConfigurationError as exc:
        print(f"fix the call: {exc}")
    return 2


def first_brief_entry(project_id: str, brief_id: str) -> Optional[str]:
    """The module-level shortcuts read RAKERONE_API_KEY and RAKERONE_BASE_URL."""
    with contextlib.closing(rakerone.iter_brief_events(project_id, brief_id, max_outage=0)) as events:
        for event in events:
            return event.type
    return None


def ticket_expiry(project_id: str, run_id: str) -> Optional[datetime.datetime]:
    ticket: rakerone.WsTicket = rakerone.mint_run_ticket(project_id, run_id)
    return ticket.expires_at


def run_status(project_id: str, run_id: str) -> Optional[str]:
    return rakerone.get_run(project_id, run_id).status
