"""TCP_NODELAY on every accepted connection, however the listening socket was bound."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from typing import Any

import httpx
import uvicorn

from rankengine.serve.http import NoDelayHTTPProtocol


async def ok_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def nodelay_of_accepted_connection(protocol: type[asyncio.Protocol]) -> int:
    """Serve one request through ``protocol`` on a socket bound the way uvicorn's --workers mode
    binds it (``proto`` 0) and return TCP_NODELAY as the accepted connection has it."""
    seen: list[int] = []

    class Recording(protocol):  # type: ignore[valid-type, misc]
        def connection_made(self, transport: asyncio.Transport) -> None:
            super().connection_made(transport)
            sock = transport.get_extra_info("socket")
            seen.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # proto 0, like bind_socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    server = uvicorn.Server(uvicorn.Config(ok_app, http=Recording, log_level="warning",
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    try:
        deadline = time.time() + 10
        while not server.started:
            assert time.time() < deadline
            time.sleep(0.01)
        port = listener.getsockname()[1]
        assert httpx.get(f"http://127.0.0.1:{port}/").text == "ok"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        listener.close()
    assert len(seen) == 1
    return seen[0]


def test_every_accepted_connection_gets_tcp_nodelay() -> None:
    # uvicorn's own protocol reads 0 here (asyncio sets the option only when proto is TCP).
    assert nodelay_of_accepted_connection(NoDelayHTTPProtocol) != 0
