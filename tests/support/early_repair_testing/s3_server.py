"""A real S3 protocol server on loopback for the tests: moto in server mode.

The store is tested against HTTP, not against moto's in-process mocks, so signing, retries,
multipart transfers, error bodies and the fault proxy are all exercised for real. The
fixtures start ``moto.server.ThreadedMotoServer`` on 127.0.0.1 and a free port, point
boto3 at it with an endpoint URL, give every test fake credentials (never the user's own
AWS configuration) and a fresh bucket. tests/conftest.py registers this module as a
plugin, so every test can ask for ``moto_endpoint``, ``s3_env`` or ``s3_bucket`` without
importing them (an import would only earn ruff's F811); import the helpers and constants
(``S3Target``, ``free_port``, ``SECRET_ACCESS_KEY``) as usual.

``moto_subprocess`` runs the same server in a separate process, for the benchmark: in
this process it would share the GIL with the client it is measured against.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# Distinctive values so that tests can assert that no message ever shows the secret.
ACCESS_KEY_ID = "AKIAEARLYREPAIRTEST1"
SECRET_ACCESS_KEY = "s3cr3t-EARLY-REPAIR-never-print-me-0123456789"
REGION = "us-east-1"

_bucket_numbers = itertools.count(1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def quiet_werkzeug() -> None:
    # The moto server logs every request on stderr, which the CLI tests read.
    logging.getLogger("werkzeug").setLevel(logging.ERROR)


def boto_client(endpoint_url: str, **config: Any) -> Any:
    """A plain boto3 client with the test credentials, independent of the store under test."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=REGION,
        aws_access_key_id=ACCESS_KEY_ID,
        aws_secret_access_key=SECRET_ACCESS_KEY,
        config=Config(retries={"mode": "standard", "total_max_attempts": 3}, **config),
    )


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    quiet_werkzeug()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


# What ThreadedMotoServer does, twice over one moto backend: a plain server, and one that
# waits ``latency`` seconds before answering each request (an emulated network round trip;
# sleeping in the server costs no CPU, unlike a proxy hop).
_SUBPROCESS_SERVER = """
import logging, sys, threading, time
from werkzeug.serving import make_server
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication, MotoRequestHandler, create_backend_app)
logging.getLogger("werkzeug").setLevel(logging.ERROR)
app = DomainDispatcherApplication(create_backend_app)
latency = float(sys.argv[1])
def delayed(environ, start_response):
    time.sleep(latency)
    return app(environ, start_response)
servers = [make_server("127.0.0.1", 0, a, threaded=True, request_handler=MotoRequestHandler)
           for a in (app, delayed)]
for server in servers:
    threading.Thread(target=server.serve_forever, daemon=True).start()
print("ready", *("http://127.0.0.1:%d" % s.server_port for s in servers), flush=True)
sys.stdin.read()  # until the parent closes stdin
for server in servers:
    server.shutdown()
"""


@contextlib.contextmanager
def moto_subprocess(latency_s: float = 0.0) -> Iterator[tuple[str, str]]:
    """A moto server in its own process; yields two endpoint URLs of the same backend: a
    plain one and one that delays every request by ``latency_s``."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _SUBPROCESS_SERVER, str(latency_s)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        ready, direct, delayed = [*proc.stdout.readline().split(), "", "", ""][:3]
        if ready != "ready":
            raise RuntimeError("the moto server process did not start")
        yield direct, delayed
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class S3Target:
    endpoint_url: str
    bucket: str

    def uri(self, prefix: str = "") -> str:
        return f"s3://{self.bucket}/{prefix}".rstrip("/")

    def client(self, **config: Any) -> Any:
        return boto_client(self.endpoint_url, **config)


def isolate_aws_env(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    """Fake credentials and nothing from the user's AWS setup (profiles, endpoints, IMDS)."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(home / "aws-config-absent"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(home / "aws-credentials-absent"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """Endpoint URL of one moto server shared by the whole session."""
    with moto_server() as url:
        yield url


@pytest.fixture
def s3_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    isolate_aws_env(monkeypatch, tmp_path_factory.mktemp("aws-home"))


@pytest.fixture
def s3_bucket(moto_endpoint: str, s3_env: None) -> S3Target:
    """A fresh, empty bucket on the session's moto server."""
    name = f"test-bucket-{os.getpid()}-{next(_bucket_numbers)}"
    boto_client(moto_endpoint).create_bucket(Bucket=name)
    return S3Target(moto_endpoint, name)
