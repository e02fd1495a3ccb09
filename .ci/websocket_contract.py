"""websocket-client's own tests, once stock and once with rakerone's stream reader in
place of its WebSocket: a test that passes stock must pass with ours, except the
intended differences listed below.

Usage: python .ci/websocket_contract.py SOURCE_DIR, where SOURCE_DIR is websocket-client's
unpacked source distribution. Tests that need a WebSocket server get a small echo server
on 127.0.0.1 (threads, wsproto). Exit status 1 if a test passing stock fails with ours.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading

import wsproto
import wsproto.events

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = ["test_websocket.py", "test_abnf.py", "test_large_payloads.py", "test_socket_bugs.py", "test_app.py"]
#: Tests that may fail with our reader, and why; none may fail for any other reason. Our
#: two intended differences (a frame whose header announces more than max_message_bytes
#: is refused before its payload is read; a control frame over 125 bytes is refused, as
#: RFC 6455 says) are exercised by none of these tests, so the list is empty.
INTENDED: dict = {}


def serve_echo(listener: socket.socket) -> None:
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:  # the listener was closed: the run is over
            return
        threading.Thread(target=echo, args=(conn,), daemon=True).start()


def echo(conn: socket.socket) -> None:
    """Echo every message, answer pings, return the close; for websocket-client's tests."""
    ws, parts = wsproto.WSConnection(wsproto.ConnectionType.SERVER), []
    with conn:
        while True:
            data = conn.recv(65536)
            if not data:
                return
            ws.receive_data(data)
            for event in ws.events():
                if isinstance(event, wsproto.events.Request):
                    conn.sendall(ws.send(wsproto.events.AcceptConnection()))
                elif isinstance(event, wsproto.events.Message):
                    parts.append(event.data)
                    if event.message_finished:
                        message = type(event)(data=type(event.data)().join(parts))
                        parts.clear()
                        conn.sendall(ws.send(message))
                elif isinstance(event, wsproto.events.Ping):
                    conn.sendall(ws.send(event.response()))
                elif isinstance(event, wsproto.events.CloseConnection):
                    conn.sendall(ws.send(event.response()))
                    return


def outcomes(source: str, port: int, *plugin: str) -> dict:
    """Each test's outcome (PASSED, FAILED, ERROR, SKIPPED...) in one pytest run."""
    env = dict(os.environ, LOCAL_WS_SERVER_PORT=str(port), PYTHONPATH=os.pathsep.join([HERE, source]))
    command = [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", "-p", "no:rakerone",
               "--timeout", "60", *plugin, *(os.path.join("websocket", "tests", name) for name in TESTS)]
    result = subprocess.run(command, cwd=source, env=env, capture_output=True, text=True, timeout=600)
    found = {test: outcome for outcome, test in re.findall(
        r"^(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS) \S*?websocket/tests/(\S+)", result.stdout, re.MULTILINE)}
    if not found:
        print(result.stdout[-3000:], result.stderr[-3000:], sep="\n")
    return found


def main(source: str) -> int:
    listener = socket.create_server(("127.0.0.1", 0))
    threading.Thread(target=serve_echo, args=(listener,), daemon=True).start()
    port = listener.getsockname()[1]
    try:
        stock = outcomes(source, port)
        ours = outcomes(source, port, "-p", "reader_shim")
    finally:
        listener.close()
    broken = {test: outcome for test, outcome in ours.items()
              if stock.get(test) == "PASSED" and outcome != "PASSED" and test not in INTENDED}
    passed = sum(1 for outcome in stock.values() if outcome == "PASSED")
    print(f"websocket-client's tests: {passed} of {len(stock)} pass stock; with our reader "
          f"{sum(1 for outcome in ours.values() if outcome == 'PASSED')} pass")
    for test, reason in INTENDED.items():
        print(f"  intended: {test}: {stock.get(test)} stock, {ours.get(test)} ours ({reason})")
    if ours.keys() != stock.keys():
        print(f"  not run the same: {sorted(ours.keys() ^ stock.keys())}")
        return 1
    for test, outcome in sorted(broken.items()):
        print(f"  BROKEN: {test}: PASSED stock, {outcome} with our reader")
    return 1 if broken or not passed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
