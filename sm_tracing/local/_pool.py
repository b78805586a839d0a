"""Keep-alive connections from the local runtime to one model container."""

from __future__ import annotations

import contextlib
import socket
import threading
from http.client import HTTPConnection, HTTPResponse, HTTPSConnection, ImproperConnectionState
from urllib.parse import urlsplit

# A kept-alive connection found unusable when reused: the request is sent again on a new one.
_STALE = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError, ImproperConnectionState)


class ContainerPool:
    """Keep-alive connections to one model container, reused across requests and threads."""

    def __init__(self, url: str, timeout: float, size: int = 32) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"container URL {url!r} must be http:// or https://host:port")
        self._factory = HTTPSConnection if parts.scheme == "https" else HTTPConnection
        self._host = parts.hostname
        self._port = parts.port
        self._prefix = parts.path.rstrip("/")
        self._timeout = timeout
        self._size = size
        self._idle: list[HTTPConnection] = []
        self._busy: set[HTTPConnection] = set()
        self._lock = threading.Lock()
        self._closed = False

    def post(
        self, path: str, headers: list[tuple[str, str]], body: bytes, *, method: str = "POST"
    ) -> tuple[HTTPConnection, HTTPResponse]:
        """Send a request (a POST unless *method* says) and return its connection (for
        :meth:`release`) and response."""
        with self._lock:
            if self._closed:
                raise ConnectionAbortedError("the local runtime is closing")
            reused = bool(self._idle)
            conn = self._idle.pop() if reused else self._new()
            self._busy.add(conn)
        try:
            return conn, self._send(conn, method, path, headers, body)
        except _STALE:
            self.release(conn, reusable=False)
            if not reused:
                raise
        except BaseException:
            self.release(conn, reusable=False)
            raise
        # The container closed a kept-alive connection before it saw the request: retry once,
        # unless it was this pool's close that cut it.
        with self._lock:
            if self._closed:
                raise ConnectionAbortedError("the local runtime is closing")
            conn = self._new()
            self._busy.add(conn)
        try:
            return conn, self._send(conn, method, path, headers, body)
        except BaseException:
            self.release(conn, reusable=False)
            raise

    def call(
        self, path: str, headers: list[tuple[str, str]], body: bytes, *, method: str = "POST"
    ) -> tuple[HTTPResponse, bytes]:
        """Send a request (a POST unless *method* says) and read the whole answer: the response
        (status, headers) and its body."""
        conn, response = self.post(path, headers, body, method=method)
        try:
            data = response.read()
        except BaseException:
            self.release(conn, reusable=False)
            raise
        self.release(conn, reusable=True)
        return response, data

    def release(self, conn: HTTPConnection, *, reusable: bool) -> None:
        """Hand a connection back: kept if its response was read to the end, else closed."""
        with self._lock:
            self._busy.discard(conn)
            if reusable and not self._closed and len(self._idle) < self._size:
                self._idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        """Close idle connections and cut busy ones, so their readers return at once."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
            busy = list(self._busy)
        for conn in idle:
            conn.close()
        for conn in busy:
            cut(conn.sock)

    def _new(self) -> HTTPConnection:
        return self._factory(self._host, self._port, timeout=self._timeout)

    def _send(
        self,
        conn: HTTPConnection,
        method: str,
        path: str,
        headers: list[tuple[str, str]],
        body: bytes,
    ) -> HTTPResponse:
        if conn.sock is None:
            _connect(conn)
        conn.putrequest(method, self._prefix + path, skip_accept_encoding=True)
        for name, value in headers:
            conn.putheader(name, value)
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        return conn.getresponse()


def _connect(conn: HTTPConnection) -> None:
    conn.connect()
    # http.client sends the head and the body in two writes: without this, Nagle's algorithm
    # can hold the body back until the container acknowledges the head.
    if conn.sock is not None:
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def cut(sock: socket.socket | None) -> None:
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
