"""pytest fixtures that point your code at the embedded fake RakerOne API.

Installing rakerone registers this module as a pytest plugin (named ``rakerone``), so
its fixtures are there in every test without a conftest::

    def test_my_report(rakerone_fake, rakerone_client):
        rakerone_fake.add_run("proj_1", {"id": "run_1", "status": "running"})
        assert rakerone_client.get_run("proj_1", "run_1").status == "running"

The fake needs the ``fake`` extra (werkzeug, simple-websocket); it is imported only
when a test asks for a fixture, so pytest starts without it. ``-p no:rakerone``
turns the plugin off.
"""

from __future__ import annotations

import typing

import pytest

if typing.TYPE_CHECKING:
    import rakerone
    import rakerone_fake as fake_server

_MISSING_EXTRA = ("the rakerone_fake fixture needs the fake's dependencies (werkzeug, "
                  "simple-websocket): install rakerone with its 'fake' extra ({error})")


@pytest.fixture
def rakerone_fake(monkeypatch: pytest.MonkeyPatch) -> typing.Iterator[fake_server.FakeRakerOne]:
    """A started FakeRakerOne on 127.0.0.1 (a free port), stopped after the test.

    For the test, RAKERONE_BASE_URL and RAKERONE_API_KEY point at it, so code that
    builds ``rakerone.Client()`` (or runs the ``rakerone`` command) talks to the fake.
    """
    try:
        from rakerone_fake import FakeRakerOne  # imported here: the extra is optional
    except ImportError as exc:
        pytest.fail(_MISSING_EXTRA.format(error=exc), pytrace=False)
    with FakeRakerOne() as fake:
        monkeypatch.setenv("RAKERONE_BASE_URL", fake.base_url)
        monkeypatch.setenv("RAKERONE_API_KEY", fake.api_key)
        yield fake


@pytest.fixture
def rakerone_client(rakerone_fake: fake_server.FakeRakerOne) -> typing.Iterator[rakerone.Client]:
    """A ``rakerone.Client`` configured for the ``rakerone_fake`` server, closed after the test."""
    import rakerone

    with rakerone.Client(rakerone_fake.api_key, base_url=rakerone_fake.base_url) as client:
        yield client
