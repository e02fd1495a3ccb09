"""pytest plugin for .ci/websocket_contract.py: websocket-client's tests with rakerone's
stream reader wherever they build a WebSocket, and a recv_into for their socket mocks."""

import websocket
import websocket._app
import websocket._core

import rakerone

Reader = rakerone._read_ahead_websocket_class()
Stock = websocket.WebSocket
for module in (websocket, websocket._core, websocket._app):
    module.WebSocket = Reader
# create_connection(url, timeout=None, class_=WebSocket): the class is bound as a default.
websocket._core.create_connection.__defaults__ = tuple(
    Reader if default is Stock else default for default in websocket._core.create_connection.__defaults__ or ())


def _recv_into(sock, view):  # the suite's mocks only have recv(); ours reads into a buffer
    data = sock.recv(len(view)) or b""
    view[:len(data)] = data
    return len(data)


def pytest_collection_modifyitems(items):
    assert websocket.create_connection.__defaults__ and Reader in websocket.create_connection.__defaults__
    for item in items:
        for mock in (getattr(item.module, name, None) for name in dir(item.module) if name.endswith("SockMock")):
            if isinstance(mock, type) and not hasattr(mock, "recv_into"):
                mock.recv_into = _recv_into
