"""S3Store against a real S3 protocol server (moto in server mode, on loopback).

The same contract tests run against FileStore and S3Store, so the trainer and the
aggregator can rely on one behaviour. Then the S3-only parts: URIs, the AWS configuration
chain, multipart transfers, one-line errors without secrets, and a fault proxy that
breaks requests on purpose while results must stay identical and whole.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from early_repair_testing.paths import REPO
from early_repair_testing.s3_faults import RECOVERABLE, FaultProxy, Request
from early_repair_testing.s3_server import SECRET_ACCESS_KEY, S3Target, free_port

from orchestrator.errors import (
    EXIT_BAD_INPUT,
    EXIT_TRANSIENT,
    BadInput,
    StoreError,
    Transient,
    TransientStoreError,
)
from orchestrator.store import KeyMissing, Store, open_store
from orchestrator.store.file import FileStore
from orchestrator.store.s3 import (
    DEFAULT_MAX_ATTEMPTS,
    EndpointUnreachable,
    S3Store,
    StoreUnavailable,
    parse_s3_uri,
)

MiB = 1 << 20


def s3_store(target: S3Target, prefix: str = "results", **options: object) -> S3Store:
    options.setdefault("endpoint_url", target.endpoint_url)
    store = open_store(target.uri(prefix), **options)
    assert isinstance(store, S3Store)
    return store


def one_line_without_secret(e: BaseException) -> str:
    text = str(e)
    assert "\n" not in text
    assert SECRET_ACCESS_KEY not in text
    assert "Traceback" not in text
    return text


# -- the Store contract, for both stores ----------------------------------------------------


@pytest.fixture(params=["file", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "file":
        return FileStore(tmp_path / "root")
    return s3_store(request.getfixturevalue("s3_bucket"), "results/root")


def test_is_a_store(store: Store) -> None:
    assert isinstance(store, Store)


def test_write_read_exists(store: Store) -> None:
    assert not store.exists("a/b.json")
    store.write_bytes("a/b.json", b'{"x": 1}')
    assert store.exists("a/b.json")
    assert store.read_bytes("a/b.json") == b'{"x": 1}'
    store.write_bytes("a/b.json", b"{}")  # replaced whole
    assert store.read_bytes("a/b.json") == b"{}"
    # Keys are normalised the same way on both stores.
    assert store.read_bytes("/a//b.json") == b"{}"


def test_missing_key_raises_key_missing(store: Store) -> None:
    with pytest.raises(KeyMissing) as info:
        store.read_bytes("nope/missing.json")
    assert isinstance(info.value, StoreError)
    assert "nope/missing.json" in str(info.value)
    assert not store.exists("nope")


def test_dotdot_keys_are_refused(store: Store) -> None:
    with pytest.raises(ValueError, match=r"\.\."):
        store.write_bytes("a/../../escape", b"x")


def test_list_is_recursive_sorted_and_folder_scoped(store: Store) -> None:
    for key in ["s/run1/b.json", "s/run1/a/x.json", "s/run10/a.json", "s/sweep.json", "t.txt"]:
        store.write_bytes(key, key.encode())
    assert store.list() == [
        "s/run1/a/x.json",
        "s/run1/b.json",
        "s/run10/a.json",
        "s/sweep.json",
        "t.txt",
    ]
    # A prefix is a folder: run1 does not pick up run10.
    assert store.list("s/run1") == ["s/run1/a/x.json", "s/run1/b.json"]
    assert store.list("s/run1/") == ["s/run1/a/x.json", "s/run1/b.json"]
    assert store.list("s/sweep.json") == ["s/sweep.json"]  # a key lists itself
    assert store.list("s/run2") == []


def test_list_with_a_delimiter_rolls_up_like_s3(store: Store) -> None:
    for key in [
        "s/sweep.json",
        "s/r1/run.json",
        "s/r1/_SUCCESS",
        "s/r1/epoch_001/base/metrics.json",
        "s/r1/epoch_005/repair/class_3/metrics.json",
        "s/r1/checkpoints/epoch_001.pt",
        "s/r1/train/summary.json",
        "s/r2/epoch_001/base/metrics.json",
        "s/r2/x_epoch_y",  # the delimiter needs its "/": not rolled up
        "top.txt",
    ]:
        store.write_bytes(key, b"x")
    assert store.list("s", delimiter="/epoch_") == [
        "s/r1/_SUCCESS",
        "s/r1/checkpoints/epoch_",
        "s/r1/epoch_",
        "s/r1/run.json",
        "s/r1/train/summary.json",
        "s/r2/epoch_",
        "s/r2/x_epoch_y",
        "s/sweep.json",
    ]
    assert store.list(delimiter="/") == ["s/", "top.txt"]
    assert store.list("s/r1", delimiter="/") == [
        "s/r1/_SUCCESS",
        "s/r1/checkpoints/",
        "s/r1/epoch_001/",
        "s/r1/epoch_005/",
        "s/r1/run.json",
        "s/r1/train/",
    ]
    assert store.list("s/nothing", delimiter="/") == []


def test_upload_and_download_files(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    payload = random.Random(1).randbytes(300_000)
    src.write_bytes(payload)
    store.upload_file("ckpt/epoch_001.pt", src)
    dest = tmp_path / "deep" / "er" / "out.bin"  # parents are created
    store.download_file("ckpt/epoch_001.pt", dest)
    assert dest.read_bytes() == payload
    with pytest.raises(KeyMissing):
        store.download_file("ckpt/epoch_002.pt", tmp_path / "none.bin")
    assert not (tmp_path / "none.bin").exists()


def test_read_many_maps_failures_to_exceptions(store: Store) -> None:
    keys = [f"r/{i:03d}/metrics.json" for i in range(40)]
    for i, key in enumerate(keys):
        store.write_bytes(key, json.dumps({"i": i}).encode())
    got = store.read_many([*keys, "r/missing.json"])
    assert list(got) == [*keys, "r/missing.json"]
    assert [json.loads(got[k])["i"] for k in keys] == list(range(40))  # type: ignore[arg-type]
    assert isinstance(got["r/missing.json"], KeyMissing)


def test_delete_prefix_removes_one_folder(store: Store) -> None:
    for key in ["s/run1/a.json", "s/run1/b/c.json", "s/run10/a.json", "s/x.json"]:
        store.write_bytes(key, b"1")
    store.delete_prefix("s/run1")
    assert store.list() == ["s/run10/a.json", "s/x.json"]
    store.delete_prefix("s/x.json")  # a prefix naming one object deletes it
    assert store.list() == ["s/run10/a.json"]
    store.delete_prefix("nothing/here")  # no error


# -- URIs and configuration -----------------------------------------------------------------


def test_uri_parsing() -> None:
    assert parse_s3_uri("s3://bucket") == ("bucket", "")
    assert parse_s3_uri("s3://my.bucket-1/a/b/") == ("my.bucket-1", "a/b")
    assert parse_s3_uri("s3://bucket//a//b") == ("bucket", "a/b")
    store = S3Store.from_uri("s3://bucket/results/")
    assert store.uri == "s3://bucket/results"
    assert store._client is None  # nothing created until the first operation


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("s3://", "names no bucket"),
        ("s3:///results", "names no bucket"),
        ("s3://Bad_Bucket/results", "not a valid bucket name"),
        ("s3://ab/results", "not a valid bucket name"),
        ("s3://-bucket/results", "not a valid bucket name"),
        ("s3://a..b/results", "not a valid bucket name"),
        ("s3://192.168.1.10/results", "not a valid bucket name"),
        ("s3://bucket/results?versionId=1", "takes no"),
        ("s3://bucket/a/../../b", "'..'"),
        (f"s3://AKIAEXAMPLE:{SECRET_ACCESS_KEY}@bucket/x", "credentials do not belong"),
    ],
)
def test_malformed_uris_are_bad_input(uri: str, expected: str) -> None:
    with pytest.raises(BadInput) as info:
        open_store(uri)
    text = one_line_without_secret(info.value)
    assert expected in text
    assert info.value.exit_code == EXIT_BAD_INPUT


@pytest.mark.parametrize(
    "endpoint",
    ["minio:9000", "ftp://minio", "http://", "http://h:port", "http://[::1", "http://h/p"],
)
def test_bad_endpoint_urls_are_bad_input(endpoint: str) -> None:
    with pytest.raises(BadInput, match=r"endpoint URL .* is not valid"):
        S3Store.from_uri("s3://bucket/x", endpoint_url=endpoint)


@pytest.mark.parametrize(
    "endpoint",
    [
        f"http://AKIAEXAMPLE:{SECRET_ACCESS_KEY}@minio:9000",
        f"https://{SECRET_ACCESS_KEY}@minio",
        f"http://AKIAEXAMPLE:{SECRET_ACCESS_KEY}@[::1",  # unparsable as well
    ],
)
def test_credentials_in_an_endpoint_url_are_refused_without_echoing_them(endpoint: str) -> None:
    with pytest.raises(BadInput) as info:
        S3Store.from_uri("s3://bucket/x", endpoint_url=endpoint)
    text = one_line_without_secret(info.value)
    assert "credentials do not belong in a URL" in text and "AWS_ACCESS_KEY_ID" in text


def test_credentials_in_aws_endpoint_url_are_refused(
    s3_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://AKIAEXAMPLE:{SECRET_ACCESS_KEY}@127.0.0.1:9")
    store = open_store("s3://bucket/results")
    with pytest.raises(BadInput) as info:
        store.read_bytes("a.json")
    assert "AWS_ENDPOINT_URL" in one_line_without_secret(info.value)


def test_bad_addressing_style_is_bad_input() -> None:
    with pytest.raises(BadInput, match="addressing_style"):
        S3Store.from_uri("s3://bucket/x", addressing_style="sideways")


def test_client_uses_adaptive_retries_and_our_options(s3_bucket: S3Target) -> None:
    store = s3_store(s3_bucket, addressing_style="path", connect_timeout=3, read_timeout=7)
    config = store.client.meta.config
    assert config.retries == {"mode": "adaptive", "total_max_attempts": DEFAULT_MAX_ATTEMPTS}
    assert config.s3 == {"addressing_style": "path"}
    assert (config.connect_timeout, config.read_timeout) == (3, 7)
    assert config.max_pool_connections >= store.max_workers
    assert store.client.meta.endpoint_url == s3_bucket.endpoint_url


def test_aws_max_attempts_from_the_environment(
    s3_bucket: S3Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "3")
    assert s3_store(s3_bucket).client.meta.config.retries["total_max_attempts"] == 3
    # An explicit value still wins.
    explicit = s3_store(s3_bucket, max_attempts=5).client.meta.config.retries
    assert explicit["total_max_attempts"] == 5


def test_endpoint_from_aws_endpoint_url_and_explicit_override(
    s3_bucket: S3Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    s3_store(s3_bucket).write_bytes("k", b"from explicit endpoint")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_bucket.endpoint_url)
    from_env = open_store(s3_bucket.uri("results"))
    assert from_env.read_bytes("k") == b"from explicit endpoint"
    # An explicit endpoint wins over the environment (which now points at nothing).
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    assert s3_store(s3_bucket).read_bytes("k") == b"from explicit endpoint"
    with pytest.raises(StoreUnavailable):
        open_store(s3_bucket.uri("results"), max_attempts=1).read_bytes("k")


@pytest.mark.parametrize(
    ("variable", "value"),
    [("AWS_ENDPOINT_URL", "minio:9000"), ("AWS_MAX_ATTEMPTS", "many"), ("AWS_PROFILE", "nope")],
)
def test_unusable_aws_configuration_is_bad_input(
    s3_env: None, monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    store = open_store("s3://bucket/results")  # lazy: nothing is read yet
    with pytest.raises(BadInput) as info:
        store.read_bytes("a.json")
    text = one_line_without_secret(info.value)
    assert text.startswith("s3://bucket/results: ") and variable in text


def test_injected_client_is_used(s3_bucket: S3Target) -> None:
    client = s3_bucket.client()
    store = S3Store.from_uri(s3_bucket.uri("injected"), client=client)
    store.write_bytes("a", b"1")
    assert store.client is client
    assert client.get_object(Bucket=s3_bucket.bucket, Key="injected/a")["Body"].read() == b"1"


def test_directory_markers_are_not_keys(s3_bucket: S3Target) -> None:
    # Consoles (MinIO's, AWS's) create "folder/" marker objects; they are not files.
    s3_bucket.client().put_object(Bucket=s3_bucket.bucket, Key="results/s/run1/", Body=b"")
    store = s3_store(s3_bucket)
    store.write_bytes("s/run1/a.json", b"1")
    assert store.list() == ["s/run1/a.json"]


# -- large files: multipart, and never a partial object -------------------------------------


def multipart_store(endpoint_url: str, target: S3Target, **options: int) -> S3Store:
    # 5 MiB is S3's smallest part; an 11 MiB file becomes three parts.
    return S3Store.from_uri(
        target.uri("mp"),
        endpoint_url=endpoint_url,
        multipart_threshold=5 * MiB,
        multipart_chunksize=5 * MiB,
        transfer_concurrency=2,
        **options,
    )


@pytest.fixture
def big_file(tmp_path: Path) -> Path:
    path = tmp_path / "epoch_010.pt"
    path.write_bytes(random.Random(10).randbytes(11 * MiB + 123))
    return path


def test_multipart_upload_and_ranged_download(
    s3_bucket: S3Target, big_file: Path, tmp_path: Path
) -> None:
    with FaultProxy(s3_bucket.endpoint_url) as proxy:  # rate 0: it only records requests
        store = multipart_store(proxy.endpoint_url, s3_bucket)
        store.upload_file("ckpt/epoch_010.pt", big_file)
        store.download_file("ckpt/epoch_010.pt", tmp_path / "back.pt")
    assert (tmp_path / "back.pt").read_bytes() == big_file.read_bytes()
    head = s3_bucket.client().head_object(Bucket=s3_bucket.bucket, Key="mp/ckpt/epoch_010.pt")
    assert head["ETag"].strip('"').endswith("-3")  # S3's mark of a three-part upload
    parts = [p for m, p, _ in proxy.log if m == "PUT" and "partNumber=" in p]
    assert len(parts) == 3
    ranged = [p for m, p, _ in proxy.log if m == "GET" and "mp/ckpt" in p]
    assert len(ranged) >= 2  # the download came in ranges as well


def test_failed_multipart_upload_leaves_no_object(
    s3_bucket: S3Target, big_file: Path, tmp_path: Path
) -> None:
    direct = multipart_store(s3_bucket.endpoint_url, s3_bucket)
    old = tmp_path / "old.pt"
    old.write_bytes(b"the previous, complete checkpoint")
    direct.upload_file("ckpt/keep.pt", old)

    def fail_part_two(request: Request) -> str | None:
        return "500" if request.method == "PUT" and "partNumber=2" in request.query else None

    with FaultProxy(s3_bucket.endpoint_url, rule=fail_part_two) as proxy:
        store = multipart_store(proxy.endpoint_url, s3_bucket, max_attempts=2)
        for key in ("ckpt/new.pt", "ckpt/keep.pt"):
            with pytest.raises(TransientStoreError) as info:
                store.upload_file(key, big_file)
            assert "InternalError" in one_line_without_secret(info.value)
            assert info.value.exit_code == EXIT_TRANSIENT
    assert proxy.faults["500"] >= 2
    assert not direct.exists("ckpt/new.pt")
    # A failed upload over an existing object leaves the old one whole.
    assert direct.read_bytes("ckpt/keep.pt") == old.read_bytes()
    # The transfer manager aborted the uploads: no parts linger.
    uploads = s3_bucket.client().list_multipart_uploads(Bucket=s3_bucket.bucket)
    assert uploads.get("Uploads", []) == []


def test_lost_complete_answer_is_retried_safely(s3_bucket: S3Target, big_file: Path) -> None:
    # The server completes the upload but the answer never arrives; the retry must not
    # fail the upload or leave anything but the whole file.
    fired: list[str] = []

    def drop_complete_once(request: Request) -> str | None:
        if request.method == "POST" and "uploadId=" in request.query and not fired:
            fired.append(request.path)
            return "drop_after"
        return None

    with FaultProxy(s3_bucket.endpoint_url, rule=drop_complete_once) as proxy:
        multipart_store(proxy.endpoint_url, s3_bucket).upload_file("ckpt/e.pt", big_file)
    assert fired and proxy.faults["drop_after"] == 1
    assert s3_store(s3_bucket, "mp").read_bytes("ckpt/e.pt") == big_file.read_bytes()


_CRASHING_UPLOADER = """
import sys
from orchestrator.store.s3 import S3Store
store = S3Store.from_uri(sys.argv[1], endpoint_url=sys.argv[2], multipart_threshold=5 << 20,
                         multipart_chunksize=5 << 20, transfer_concurrency=1)
store.upload_file("ckpt/crash.pt", sys.argv[3])
"""


def test_uploader_killed_mid_multipart_leaves_no_object(
    s3_bucket: S3Target, big_file: Path
) -> None:
    # A pod preempted mid-upload: part 1 arrives, part 2 hangs, the process is killed.
    def stall_part_two(request: Request) -> str | None:
        return "stall" if request.method == "PUT" and "partNumber=2" in request.query else None

    with FaultProxy(s3_bucket.endpoint_url, rule=stall_part_two, stall_s=60) as proxy:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                _CRASHING_UPLOADER,
                s3_bucket.uri("mp"),
                proxy.endpoint_url,
                str(big_file),
            ],
            cwd=REPO,
            env=os.environ.copy(),
        )
        try:
            deadline = time.monotonic() + 60
            while not proxy.faults["stall"] and time.monotonic() < deadline:
                time.sleep(0.05)
            assert proxy.faults["stall"], "the uploader never reached part 2"
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    client = s3_bucket.client()
    assert not s3_store(s3_bucket, "mp").exists("ckpt/crash.pt")
    pending = client.list_multipart_uploads(Bucket=s3_bucket.bucket).get("Uploads", [])
    assert [u["Key"] for u in pending] == ["mp/ckpt/crash.pt"]  # parts, never an object


# -- errors: one line, exit code 2, the URI and the fix, never the secret ---------------------


def test_missing_bucket(moto_endpoint: str, s3_env: None, tmp_path: Path) -> None:
    store = open_store("s3://no-such-bucket-here/results", endpoint_url=moto_endpoint)
    src = tmp_path / "f"
    src.write_bytes(b"1")
    for op in (
        store.check,
        lambda: store.read_bytes("a.json"),
        lambda: store.write_bytes("a.json", b"1"),
        lambda: store.list(),
        lambda: store.upload_file("f", src),
    ):
        with pytest.raises(StoreUnavailable) as info:
            op()
        text = one_line_without_secret(info.value)
        assert "s3://no-such-bucket-here/results" in text
        assert "does not exist" in text and "create it" in text
        assert info.value.exit_code == EXIT_BAD_INPUT  # permanent: retrying cannot help
        assert not isinstance(info.value, Transient)


def test_no_credentials(s3_bucket: S3Target, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(StoreUnavailable) as info:
        s3_store(s3_bucket).read_bytes("a.json")
    text = one_line_without_secret(info.value)
    assert "no AWS credentials" in text and "AWS_ACCESS_KEY_ID" in text
    assert s3_bucket.uri("results") in text


def _moto_auth(endpoint: str, count: str) -> None:
    request = urllib.request.Request(
        f"{endpoint}/moto-api/reset-auth",
        data=count.encode(),
        method="POST",
        headers={"Content-Type": "text/plain"},  # moto reads the raw body, not a form
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200


@pytest.fixture
def iam_users(s3_bucket: S3Target):
    """Two IAM users on the moto server, then moto's signature and policy checks turned on."""
    import boto3

    iam = boto3.client(
        "iam",
        endpoint_url=s3_bucket.endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="bootstrap",
        aws_secret_access_key="bootstrap",
    )
    keys = {}
    suffix = s3_bucket.bucket[-6:]
    for user, allowed in (("writer", True), ("nobody", False)):
        name = f"{user}-{suffix}"
        iam.create_user(UserName=name)
        if allowed:
            policy = {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
            }
            iam.put_user_policy(UserName=name, PolicyName="s3", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName=name)["AccessKey"]
        keys[user] = (key["AccessKeyId"], key["SecretAccessKey"])
    _moto_auth(s3_bucket.endpoint_url, "0")
    try:
        yield keys
    finally:
        _moto_auth(s3_bucket.endpoint_url, "inf")


@pytest.mark.parametrize(
    ("who", "code", "hint"),
    [
        ("unknown-key", "InvalidAccessKeyId", "AWS_ACCESS_KEY_ID"),
        ("wrong-secret", "SignatureDoesNotMatch", "AWS_SECRET_ACCESS_KEY"),
        ("nobody", "AccessDenied", "access denied"),
    ],
)
def test_wrong_credentials(
    s3_bucket: S3Target,
    iam_users: dict[str, tuple[str, str]],
    monkeypatch: pytest.MonkeyPatch,
    who: str,
    code: str,
    hint: str,
) -> None:
    writer_id, writer_secret = iam_users["writer"]
    # Control: the right credentials work while moto checks signatures and policies.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", writer_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", writer_secret)
    s3_store(s3_bucket).write_bytes("ok.json", b"1")

    key_id, secret = {
        "unknown-key": ("AKIAUNKNOWNUNKNOWN00", SECRET_ACCESS_KEY),
        "wrong-secret": (writer_id, SECRET_ACCESS_KEY),
        "nobody": (iam_users["nobody"][0], iam_users["nobody"][1]),
    }[who]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    store = s3_store(s3_bucket)
    for op in (store.check, lambda: store.read_bytes("ok.json")):
        with pytest.raises(StoreUnavailable) as info:
            op()
        text = one_line_without_secret(info.value)
        assert secret not in text and writer_secret not in text
        assert code in text and hint in text
        assert s3_bucket.uri("results") in text
        assert info.value.exit_code == EXIT_BAD_INPUT


def test_unreachable_endpoint(s3_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    store = open_store("s3://bucket/results", endpoint_url=endpoint)
    started = time.monotonic()
    with pytest.raises(EndpointUnreachable) as info:
        store.read_bytes("a.json")
    text = one_line_without_secret(info.value)
    assert endpoint in text and "after 2 attempts" in text and "--endpoint-url" in text
    assert "EndpointConnectionError" in text
    # The whole store is out of reach (bulk reads stop), but maybe only for now: retriable.
    assert isinstance(info.value, StoreUnavailable) and isinstance(info.value, Transient)
    assert info.value.exit_code == EXIT_TRANSIENT
    assert time.monotonic() - started < 30


def test_endpoint_that_never_answers(s3_bucket: S3Target) -> None:
    with FaultProxy(s3_bucket.endpoint_url, rate=1.0, kinds=["stall"]) as proxy:
        store = open_store(
            s3_bucket.uri("results"),
            endpoint_url=proxy.endpoint_url,
            read_timeout=0.5,
            max_attempts=2,
        )
        with pytest.raises(StoreUnavailable) as info:
            store.write_bytes("a.json", b"1")
    text = one_line_without_secret(info.value)
    assert "no answer within 0.5 s" in text and "after 2 attempts" in text
    assert info.value.exit_code == EXIT_TRANSIENT
    assert proxy.faults["stall"] == 2  # botocore retried once, as configured


@pytest.mark.parametrize(
    ("kind", "code"),
    [
        ("500", "InternalError"),
        # Adaptive mode backs off for seconds on throttling, as it should.
        pytest.param("503", "SlowDown", marks=pytest.mark.slow),
        ("drop", "Connection"),
    ],
)
def test_failures_that_outlast_the_retries_are_transient(
    s3_bucket: S3Target, kind: str, code: str
) -> None:
    with FaultProxy(s3_bucket.endpoint_url, rate=1.0, kinds=[kind]) as proxy:
        store = s3_store(s3_bucket, endpoint_url=proxy.endpoint_url, max_attempts=2)
        for op in (store.check, lambda: store.write_bytes("a.json", b"1")):
            with pytest.raises(TransientStoreError) as info:
                op()
            text = one_line_without_secret(info.value)
            assert code in text and s3_bucket.uri("results") in text
            assert info.value.exit_code == EXIT_TRANSIENT
    assert proxy.faults[kind] == 4  # two attempts per operation, as configured


def test_a_request_the_server_refuses_is_permanent(s3_bucket: S3Target) -> None:
    with FaultProxy(s3_bucket.endpoint_url, rate=1.0, kinds=["400"]) as proxy:
        store = s3_store(s3_bucket, endpoint_url=proxy.endpoint_url)
        with pytest.raises(StoreError) as info:
            store.write_bytes("a.json", b"1")
    assert proxy.faults["400"] == 1  # botocore does not retry a 400 either
    assert not isinstance(info.value, Transient)
    assert "InvalidRequest" in one_line_without_secret(info.value)
    assert info.value.exit_code == EXIT_BAD_INPUT


def test_read_many_stops_at_an_unusable_store(moto_endpoint: str, s3_env: None) -> None:
    with FaultProxy(moto_endpoint) as proxy:
        store = open_store("s3://no-such-bucket-here/r", endpoint_url=proxy.endpoint_url)
        got = store.read_many([f"k{i}" for i in range(300)])
    assert all(isinstance(v, StoreUnavailable) for v in got.values())
    assert proxy.requests < 100  # it stopped instead of trying all 300 keys


# -- fault injection: the same results through 500s, SlowDowns, drops and cut bodies --------


def records(n: int) -> dict[str, bytes]:
    rng = random.Random(5)
    return {
        f"s/run{i % 7}/epoch_{i:03d}/metrics.json": json.dumps(
            {"i": i, "accuracy": rng.random()}
        ).encode()
        for i in range(n)
    }


@pytest.mark.slow  # 15-25 s: adaptive mode slows down after each SlowDown, as it should
def test_store_operations_survive_faults(s3_bucket: S3Target, tmp_path: Path) -> None:
    data = records(120)
    ckpt = tmp_path / "ckpt.pt"
    ckpt.write_bytes(random.Random(2).randbytes(200_000))
    with FaultProxy(s3_bucket.endpoint_url, rate=0.15, seed=11, kinds=RECOVERABLE) as proxy:
        store = s3_store(s3_bucket, "faulty", endpoint_url=proxy.endpoint_url)
        for key, value in data.items():
            store.write_bytes(key, value)
        store.upload_file("s/run0/checkpoints/epoch_001.pt", ckpt)
        listed = store.list("s")
        got = store.read_many(listed)
        store.download_file("s/run0/checkpoints/epoch_001.pt", tmp_path / "back.pt")
        store.delete_prefix("s/run3")
        after = store.list()
    assert listed == sorted([*data, "s/run0/checkpoints/epoch_001.pt"])
    assert {k: got[k] for k in data} == data
    assert (tmp_path / "back.pt").read_bytes() == ckpt.read_bytes()
    assert after == sorted(k for k in listed if not k.startswith("s/run3/"))
    # The proxy really broke things, in every way it knows.
    assert all(proxy.faults[kind] > 0 for kind in RECOVERABLE), proxy.faults
    # And the same keys through the fault-free path hold the same bytes.
    clean = s3_store(s3_bucket, "faulty")
    assert clean.read_many(after) == {k: got[k] for k in after}


def _version(n: int) -> bytes:
    """Version n of an object: a header naming its length and digest, then the body."""
    body = random.Random(n).randbytes(50_000 + 20_000 * n)
    return f"v{n}:{len(body)}:{hashlib.sha256(body).hexdigest()}\n".encode() + body


def _is_whole(blob: bytes) -> bool:
    header, _, body = blob.partition(b"\n")
    _, length, digest = header.decode().split(":")
    return len(body) == int(length) and hashlib.sha256(body).hexdigest() == digest


def test_partial_objects_are_never_read_as_complete(s3_bucket: S3Target) -> None:
    # The writer's uploads are cut off mid-body or dropped; the reader's downloads are cut
    # short. Every read that succeeds must be one whole version. The reader runs alongside
    # the writer, in lock-step rounds rather than free-running: in round n it reads while
    # version n is being written, and the writer waits for the round's reads before it
    # starts version n + 1. How many reads there are, and which of them meet a fault (each
    # proxy's seeded draws, in its own client's request order), is then fixed; only which
    # version a read sees depends on timing - and that is what is checked.
    write_faults = ("cut_upload", "drop", "drop_after", "500")
    rounds, reads_per_round = 12, 3
    seen: list[tuple[int, bytes]] = []
    errors: list[BaseException] = []
    go = [threading.Event() for _ in range(rounds + 1)]
    finished = [threading.Event() for _ in range(rounds + 1)]
    with (
        FaultProxy(s3_bucket.endpoint_url, rate=0.3, seed=3, kinds=write_faults) as wproxy,
        FaultProxy(s3_bucket.endpoint_url, rate=0.3, seed=4, kinds=["truncate"]) as rproxy,
    ):
        writer = s3_store(s3_bucket, "race", endpoint_url=wproxy.endpoint_url)
        reader = s3_store(s3_bucket, "race", endpoint_url=rproxy.endpoint_url)
        writer.write_bytes("blob", _version(0))

        def read_rounds() -> None:
            for n in range(1, rounds + 1):
                if not go[n].wait(timeout=120):
                    return
                for _ in range(reads_per_round):
                    try:
                        seen.append((n, reader.read_bytes("blob")))
                    except StoreError as e:  # allowed: an error, never a short object
                        errors.append(e)
                finished[n].set()

        thread = threading.Thread(target=read_rounds)
        thread.start()
        try:
            for n in range(1, rounds + 1):
                go[n].set()  # the reads of round n overlap the write of version n
                writer.write_bytes("blob", _version(n))
                assert finished[n].wait(timeout=120), f"round {n}: the reader is stuck"
        finally:
            for event in go:
                event.set()
            thread.join()
    assert wproxy.faults["cut_upload"] > 0 and rproxy.faults["truncate"] > 0
    assert len(seen) + len(errors) == rounds * reads_per_round
    assert len(seen) >= rounds  # a truncated read is refetched: errors are the exception
    for n, blob in seen:
        assert _is_whole(blob)
        # Version n-1 (written before the round) or n (written during it), nothing else.
        assert blob.split(b":", 1)[0] in (f"v{n - 1}".encode(), f"v{n}".encode()), n
    assert s3_store(s3_bucket, "race").read_bytes("blob") == _version(rounds)


def test_reads_cut_short_every_time_fail_loudly(s3_bucket: S3Target) -> None:
    s3_store(s3_bucket).write_bytes("big.json", b"x" * 100_000)
    with FaultProxy(s3_bucket.endpoint_url, rate=1.0, kinds=["truncate"]) as proxy:
        store = s3_store(s3_bucket, endpoint_url=proxy.endpoint_url)
        with pytest.raises(TransientStoreError) as info:
            store.read_bytes("big.json")
        got = store.read_many(["big.json"])
    assert "broke while reading" in one_line_without_secret(info.value)
    assert info.value.exit_code == EXIT_TRANSIENT
    assert isinstance(got["big.json"], TransientStoreError)
    assert proxy.faults["truncate"] >= 2  # the managed download retried too


# -- listing and deleting beyond one page ---------------------------------------------------


@pytest.mark.slow
def test_large_listing_and_delete(s3_bucket: S3Target) -> None:
    keys = [f"s/run{r}/epoch_{e:03d}/metrics.json" for r in range(6) for e in range(220)]
    seed = s3_store(s3_bucket, "big")
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: seed.write_bytes(k, b"{}"), keys))
    with FaultProxy(s3_bucket.endpoint_url) as proxy:
        store = s3_store(s3_bucket, "big", endpoint_url=proxy.endpoint_url)
        listed = store.list()
        assert listed == sorted(keys)
        assert store.list("s/run2") == sorted(k for k in keys if k.startswith("s/run2/"))
        lists = [p for m, p, _ in proxy.log if m == "GET" and "list-type=2" in p]
        # More than one page: the run folders were found and listed side by side.
        assert any("delimiter=" in p for p in lists)
        assert sum("prefix=big%2Fs%2Frun" in p for p in lists) >= 6
        store.delete_prefix("s")
        assert store.list() == []


# -- the protocol on its own stays import-light ---------------------------------------------


def test_opening_an_s3_store_is_lazy_and_torch_free() -> None:
    code = textwrap.dedent(
        """
        import sys
        from orchestrator.store import open_store
        store = open_store("s3://bucket/results", endpoint_url="http://127.0.0.1:1")
        assert store._client is None
        assert "torch" not in sys.modules
        print("ok")
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
