"""uvicorn's HTTP protocol with TCP_NODELAY on every connection.

asyncio turns Nagle's algorithm off only for sockets whose ``proto`` is IPPROTO_TCP. uvicorn's
``--workers N`` mode binds its listening socket with ``proto`` 0, so the connections it accepts
keep Nagle on: a response written as headers and then a body waits for the client's delayed ACK.
Measured with 2 workers: every 100-candidate ranking took 48 ms end to end for 5 ms of server
work. Setting the option on each connection makes it independent of how the socket was bound.

The same protocol also bounds how long a client may hold a connection without finishing a request:
uvicorn waits for request headers forever (its keep-alive timeout only runs between requests), so
a client that opens connections and sends nothing, or trickles its headers a byte at a time
(slowloris), or stops in the middle of its body, held a connection and its file descriptor until it
went away. Headers must now be complete within :attr:`header_timeout` seconds of the request's
first byte (of the connection's opening for the first request), and a body must not stall for
more than :attr:`body_timeout` seconds; either is answered 408 and the connection closed. A
request that is not HTTP at all is answered with the server's one-line JSON error, not
uvicorn's plain text.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import h11
import orjson
from uvicorn.protocols.http.h11_impl import STATUS_PHRASES, H11Protocol


def set_nodelay(transport: asyncio.BaseTransport) -> bool:
    sock: Any = transport.get_extra_info("socket")
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return False
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return True


class NoDelayH11Protocol(H11Protocol):
    header_timeout = 10.0  # seconds from a request's first byte to the end of its headers
    body_timeout = 30.0  # seconds a request body may stall between two reads

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        set_nodelay(transport)
        super().connection_made(transport)
        self._deadline: asyncio.TimerHandle | None = None
        self._arm(self.header_timeout)

    def _arm(self, seconds: float) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = self.loop.call_later(seconds, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def data_received(self, data: bytes) -> None:
        if self._deadline is None and self.conn.their_state is h11.IDLE:
            self._arm(self.header_timeout)  # the first byte of the next request
        super().data_received(data)
        if self.transport.is_closing():
            self._disarm()
        elif self.conn.their_state is h11.SEND_BODY:
            self._arm(self.body_timeout)  # restarted by every read of the body
        elif self.conn.their_state is not h11.IDLE:
            self._disarm()  # the request is complete: the application has it

    def on_response_complete(self) -> None:
        self._disarm()  # uvicorn's keep-alive timeout runs until the next byte
        super().on_response_complete()
        if self.conn.their_state is h11.SEND_BODY and not self.transport.is_closing():
            self._arm(self.body_timeout)  # a pipelined request, its body still coming

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _expired(self) -> None:
        self._deadline = None
        state = self.conn.their_state
        if self.transport.is_closing() or state not in (h11.IDLE, h11.SEND_BODY):
            return
        if state is h11.IDLE:
            message = (f"request headers not complete within {self.header_timeout:g} s; "
                       f"closing the connection")
        else:
            message = (f"request body stalled for {self.body_timeout:g} s; closing the "
                       f"connection")
        self.logger.warning("%s (client %s)", message, self.client)
        if self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            self._send_error(408, message)
        self.transport.close()

    def send_400_response(self, msg: str) -> None:
        self._disarm()
        self._send_error(400, "invalid HTTP request (malformed request line, header, "
                              "Content-Length or chunked encoding)")
        self.transport.close()

    def _send_error(self, status: int, message: str) -> None:
        """A one-line JSON error written straight to the connection, which then closes."""
        body = orjson.dumps({"error": message})
        try:
            for event in (h11.Response(status_code=status, reason=STATUS_PHRASES[status],
                                       headers=[(b"content-type", b"application/json"),
                                                (b"content-length", str(len(body)).encode()),
                                                (b"connection", b"close")]),
                          h11.Data(data=body), h11.EndOfMessage()):
                self.transport.write(self.conn.send(event) or b"")
        except h11.LocalProtocolError:  # a state h11 cannot answer from: just close
            pass


# h11 always, httptools or not: the deadlines above are written against h11's states (httptools
# changed nothing measurable at 500 candidates, benchmarks/RESULTS.md)
NoDelayHTTPProtocol: type[asyncio.Protocol] = NoDelayH11Protocol
