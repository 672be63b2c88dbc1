"""A loopback HTTP proxy that breaks S3 traffic on purpose, to prove the store survives it.

Real object storage answers 500 InternalError and 503 SlowDown, drops connections and cuts
responses short; a store that only ever met a perfect server proves nothing. This proxy sits
between boto3 and the moto server and, for a seeded share of requests, does one of:

- ``500``: answer ``500 InternalError`` (S3's XML error body) without forwarding;
- ``503``: answer ``503 SlowDown`` without forwarding (a throttling error for botocore);
- ``400``: answer ``400 InvalidRequest`` without forwarding (a refusal no retry changes);
- ``403``: answer ``403 AccessDenied`` without forwarding (credentials that may not);
- ``drop``: close the connection without forwarding (the server never saw the request);
- ``drop_after``: forward, let the server apply the request, then close without an answer
  (the ambiguous failure: the client must retry an operation that already happened);
- ``truncate``: forward, then send the headers and only half of the response body;
- ``cut_upload``: forward the request headers and only half of the request body to the
  server, then hang up on both sides (a writer that dies mid-upload);
- ``stall``: read the request and never answer (a read timeout for the client).

It is a plain ``ThreadingHTTPServer``: HTTP/1.1 with keep-alive towards the client, one
upstream connection per request. The Host header is forwarded untouched because SigV4
signs it. Fault decisions come from ``random.Random(seed)`` in arrival order; with several
client threads which request gets which fault depends on timing, so tests must assert on
outcomes (identical results), never on which request failed.
"""

from __future__ import annotations

import http.client
import random
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

FAULT_KINDS = ("500", "503", "400", "403", "drop", "drop_after", "truncate", "cut_upload", "stall")
# What a random share of requests suffers by default: every kind that botocore's retry
# configuration (or the store's managed-download fallback) is expected to absorb.
RECOVERABLE = ("500", "503", "drop", "drop_after", "truncate")

# Hop-by-hop headers are per connection; the proxy sets its own.
_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "expect"}
# The proxy's own BaseHTTPRequestHandler writes these; forwarding them would duplicate them.
_OWN = {"server", "date", "content-length"}


@dataclass(frozen=True)
class Request:
    """What a rule sees: enough to target one S3 operation."""

    method: str
    path: str  # path and query, e.g. '/bucket/key?uploadId=...'
    headers: dict[str, str]

    @property
    def query(self) -> str:
        return urlparse(self.path).query


Rule = Callable[[Request], str | None]


def _error_xml(code: str, message: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message>"
        "<RequestId>fault-proxy</RequestId></Error>"
    ).encode()


class FaultProxy:
    """``with FaultProxy("http://127.0.0.1:PORT", rate=0.2, seed=7) as proxy: ...``.

    ``rate``: share of requests that get a fault drawn from ``kinds``; ``rule`` may force
    a kind (or ``"pass"``) for particular requests and wins over the random draw;
    ``stall_s`` bounds how long a stalled request hangs.
    """

    def __init__(
        self,
        upstream: str,
        *,
        rate: float = 0.0,
        seed: int = 0,
        kinds: Iterable[str] = RECOVERABLE,
        rule: Rule | None = None,
        stall_s: float = 30.0,
    ) -> None:
        parsed = urlparse(upstream)
        if parsed.scheme != "http" or not parsed.hostname or not parsed.port:
            raise ValueError(f"upstream must be http://host:port, not {upstream!r}")
        self.kinds = tuple(kinds)
        unknown = set(self.kinds) - set(FAULT_KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}")
        self.upstream = (parsed.hostname, parsed.port)
        self.rate = rate
        self.rule = rule
        self.stall_s = stall_s
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._release = threading.Event()  # ends stalls at shutdown
        self.faults: Counter[str] = Counter()
        self.requests = 0
        self.log: list[tuple[str, str, str]] = []  # (method, path, fault or "pass")
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        proxy = self

        class Handler(_Handler):
            owner = proxy

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._release.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def endpoint_url(self) -> str:
        assert self._server is not None, "start() the proxy first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # -- decisions ------------------------------------------------------------------------

    def decide(self, request: Request) -> str:
        with self._lock:
            self.requests += 1
            kind = self.rule(request) if self.rule is not None else None
            if kind is None:
                hit = self.kinds and self._random.random() < self.rate
                kind = self._random.choice(self.kinds) if hit else "pass"
            if kind != "pass":
                self.faults[kind] += 1
            self.log.append((request.method, request.path, kind))
            return kind


class _Handler(BaseHTTPRequestHandler):
    owner: FaultProxy
    protocol_version = "HTTP/1.1"  # keep-alive and 100-continue towards boto3
    # Headers and body go out in separate writes; with Nagle's algorithm on, the client's
    # delayed ACK would add ~40 ms to every response.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: tests assert on stderr."""

    def do_GET(self) -> None:
        self._proxy()

    do_PUT = do_POST = do_DELETE = do_HEAD = do_GET

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _upstream_headers(self, body: bytes) -> dict[str, str]:
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
        if "content-length" not in {k.lower() for k in headers} and (
            body or self.command in ("PUT", "POST")
        ):
            headers["Content-Length"] = str(len(body))
        return headers

    def _hang_up(self) -> None:
        self.close_connection = True
        try:
            self.wfile.flush()
        finally:
            self.connection.close()

    def _reply_error(self, status: int, code: str) -> None:
        body = _error_xml(code, "injected by the fault proxy")
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _proxy(self) -> None:
        owner = self.owner
        body = self._read_body()
        request = Request(self.command, self.path, dict(self.headers.items()))
        kind = owner.decide(request)
        if kind == "500":
            return self._reply_error(500, "InternalError")
        if kind == "503":
            return self._reply_error(503, "SlowDown")
        if kind == "400":
            return self._reply_error(400, "InvalidRequest")
        if kind == "403":
            return self._reply_error(403, "AccessDenied")
        if kind == "drop":
            return self._hang_up()
        if kind == "stall":
            owner._release.wait(owner.stall_s)
            return self._hang_up()
        headers = self._upstream_headers(body)
        conn = http.client.HTTPConnection(*owner.upstream, timeout=120)
        try:
            if kind == "cut_upload" and len(body) > 1:
                conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                for k, v in headers.items():
                    conn.putheader(k, v)
                conn.endheaders()
                conn.send(body[: len(body) // 2])
                conn.close()
                return self._hang_up()
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            resp_headers = [(k, v) for k, v in resp.getheaders() if k.lower() not in _HOP | _OWN]
            length = resp.getheader("Content-Length")
        finally:
            conn.close()
        if kind in ("drop_after", "cut_upload"):
            return self._hang_up()
        self.send_response(resp.status, resp.reason)
        for k, v in resp_headers:
            self.send_header(k, v)
        if self.command == "HEAD":
            self.send_header("Content-Length", length or "0")
            self.end_headers()
            return None
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if kind == "truncate" and len(data) > 1:
            self.wfile.write(data[: len(data) // 2])
            return self._hang_up()
        self.wfile.write(data)
        return None
