"""S3 and S3-compatible object storage (AWS S3, MinIO, Ceph RGW, ...) behind the Store protocol.

On a cluster, pods are ephemeral: whatever a run produces must reach object storage,
survive restarts, and be readable by the aggregator from a laptop. ``S3Store`` gives the
trainer and the aggregator the same ``Store`` protocol as the file store, with boto3:

- configuration comes from the standard AWS chain (environment variables including
  ``AWS_ENDPOINT_URL``/``AWS_ENDPOINT_URL_S3``, config and credentials files, profiles,
  IRSA/web identity, instance roles); an explicit endpoint URL or region wins over it;
- transient failures (500, 503 SlowDown, dropped connections, timeouts) are retried by
  botocore's own retry machinery in adaptive mode - there is no retry loop here;
- files go through boto3's managed transfer (multipart above a threshold, ranged and
  retried downloads written to a temporary name first);
- bulk reads and listings fan out on a thread pool around ONE client (botocore clients
  are thread-safe, resources and sessions are not), so aggregating a large sweep is
  bounded by bandwidth rather than by round trips.

Every object appears whole or not at all: a PUT is atomic by S3 semantics, and a multipart
upload stays invisible until CompleteMultipartUpload (a failed one is aborted by the
transfer manager; one interrupted by a crash never becomes an object - a bucket lifecycle
rule ``AbortIncompleteMultipartUpload`` reclaims its parts). Reads are checked against
Content-Length and, where the server stores one, the object's checksum, so a body cut
short is an error, never a shorter record.

Failures become one-line errors (``errors``): permanent ones exit 2, what botocore's
retries could not ride out exits 69 (``EXIT_TRANSIENT``), which a Kubernetes Job retries.
"""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from boto3.exceptions import Boto3Error
from botocore.exceptions import BotoCoreError, ClientError, ProfileNotFound
from s3transfer.exceptions import RetriesExceededError as TransferRetriesExceeded

from orchestrator.errors import BadInput, EarlyRepairError, StoreError, TransientStoreError
from orchestrator.store.base import KeyMissing, ObjectTooLarge, clean_key, unsafe_key
from orchestrator.store.s3.errors import STREAM_ERRORS, StoreUnavailable, is_transient, translate
from orchestrator.store.s3.uri import parse_s3_uri
from orchestrator.urls import check_endpoint, credentials_problem, redact

if TYPE_CHECKING:
    from boto3.s3.transfer import TransferConfig

# botocore builds client classes at run time; there is no static type to name.
S3Client = Any

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

# Total attempts per request (first try included) unless AWS_MAX_ATTEMPTS or the profile's
# max_attempts says otherwise. Adaptive mode backs off 0-50 ms x 2^i on errors and
# 0-1 s x 2^i (capped at 20 s) on throttling, so 8 attempts ride out up to about a minute
# of SlowDown before giving up.
DEFAULT_MAX_ATTEMPTS = 8
# Threads for read_many/list/delete. The work is waiting on the network, not the CPU.
DEFAULT_WORKERS = 32
MiB = 1 << 20


class S3Store:
    """A bucket and key prefix: ``S3Store.from_uri("s3://bucket/prefix", endpoint_url=...)``.

    Nothing touches the network (or even creates a client) until the first operation;
    tests and callers that already hold a client pass it as ``client``.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        addressing_style: str = "auto",
        client: S3Client | None = None,
        max_attempts: int | None = None,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        max_workers: int = DEFAULT_WORKERS,
        multipart_threshold: int = 8 * MiB,
        multipart_chunksize: int = 8 * MiB,
        transfer_concurrency: int = 8,
    ) -> None:
        if addressing_style not in ("auto", "path", "virtual"):
            raise BadInput(
                f"storage.addressing_style {addressing_style!r} is not valid: use auto, path"
                " or virtual"
            )
        if max_attempts is not None and max_attempts < 1:
            raise BadInput(f"S3 max_attempts must be at least 1, not {max_attempts}")
        if max_workers < 1:
            raise BadInput(f"S3 max_workers must be at least 1, not {max_workers}")
        self.bucket = bucket
        self.prefix = clean_key(prefix)
        self.uri = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self.endpoint_url = check_endpoint(endpoint_url) if endpoint_url else None
        self.region = region or None
        self.addressing_style = addressing_style
        self.max_attempts = max_attempts
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.max_workers = max_workers
        self.multipart_threshold = multipart_threshold
        self.multipart_chunksize = multipart_chunksize
        self.transfer_concurrency = transfer_concurrency
        self._client = client
        self._attempts = max_attempts or DEFAULT_MAX_ATTEMPTS
        self._lock = threading.Lock()
        self._transfer: TransferConfig | None = None
        # Listed keys left out because they are not safe to use (``_safe``): key -> why.
        self.refused: dict[str, str] = {}

    @classmethod
    def from_uri(
        cls,
        uri: str,
        endpoint_url: str | None = None,
        region: str | None = None,
        addressing_style: str = "auto",
        client: S3Client | None = None,
        **options: Any,
    ) -> S3Store:
        """``options``: max_attempts, timeouts, max_workers, multipart sizes (see __init__)."""
        bucket, prefix = parse_s3_uri(uri)
        return cls(
            bucket,
            prefix,
            endpoint_url=endpoint_url,
            region=region,
            addressing_style=addressing_style,
            client=client,
            **options,
        )

    def __repr__(self) -> str:
        return f"S3Store({self.uri!r}, endpoint_url={self.endpoint_url!r})"

    # -- the client, created once and shared by every thread -----------------------------

    @property
    def client(self) -> S3Client:
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client = self._make_client()
        return self._client

    def _make_client(self) -> S3Client:
        import boto3
        import botocore.session
        from botocore.config import Config

        try:
            core = botocore.session.get_session()
            # Honour AWS_MAX_ATTEMPTS / the profile's max_attempts; ours is only the default.
            configured = core.get_config_variable("max_attempts")
            if self.max_attempts is None and configured:
                self._attempts = int(configured)
            config = Config(
                retries={"mode": "adaptive", "total_max_attempts": self._attempts},
                connect_timeout=self.connect_timeout,
                read_timeout=self.read_timeout,
                max_pool_connections=self.max_workers + self.transfer_concurrency,
                tcp_keepalive=True,
                s3={"addressing_style": self.addressing_style},
            )
            session = boto3.session.Session(botocore_session=core, region_name=self.region)
            client = session.client("s3", endpoint_url=self.endpoint_url, config=config)
        except ProfileNotFound as e:
            raise BadInput(
                f"{self.uri}: AWS_PROFILE names a profile that is not in the AWS config"
                " files; fix AWS_PROFILE or ~/.aws/config"
            ) from e
        except ValueError as e:  # e.g. AWS_ENDPOINT_URL=minio:9000, AWS_MAX_ATTEMPTS=many
            detail = " ".join(redact(word) for word in str(e).split())[:200]
            raise BadInput(
                f"{self.uri}: the AWS configuration is not usable ({detail}); check"
                " AWS_ENDPOINT_URL (http(s)://host[:port]), AWS_MAX_ATTEMPTS and ~/.aws/config"
            ) from e
        # AWS_ENDPOINT_URL or the config file may carry user:password@ too; never send it.
        problem = credentials_problem(client.meta.endpoint_url or "")
        if problem:
            client.close()
            raise BadInput(f"{self.uri}: AWS_ENDPOINT_URL or ~/.aws/config: {problem}")
        return client

    @property
    def transfer_config(self) -> TransferConfig:
        if self._transfer is None:
            from boto3.s3.transfer import TransferConfig

            self._transfer = TransferConfig(
                multipart_threshold=self.multipart_threshold,
                multipart_chunksize=self.multipart_chunksize,
                max_concurrency=self.transfer_concurrency,
            )
        return self._transfer

    def close(self) -> None:
        """Release the client's connections (it is recreated on the next use)."""
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def __enter__(self) -> S3Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- keys ------------------------------------------------------------------------------

    def _full(self, key: str) -> str:
        k = clean_key(key)
        if not k:
            raise BadInput(f"{self.uri}: an empty key names no object")
        return f"{self.prefix}/{k}" if self.prefix else k

    def _rel(self, full: str) -> str:
        return full[len(self.prefix) + 1 :] if self.prefix else full

    def _dir(self, prefix: str) -> str:
        """The S3 key prefix of a 'folder' below the root: '' or ending with '/'."""
        p = clean_key(prefix)
        parts = [x for x in (self.prefix, p) if x]
        return "/".join(parts) + "/" if parts else ""

    # -- errors ----------------------------------------------------------------------------

    def _endpoint(self) -> str:
        url = self._client.meta.endpoint_url if self._client is not None else self.endpoint_url
        return redact(url) if url else "the default AWS S3 endpoint"

    def _error(self, e: BaseException, op: str, key: str | None = None) -> EarlyRepairError:
        """Our one-line error for a boto3/botocore failure; never includes credentials."""
        return translate(
            e,
            op,
            key,
            uri=self.uri,
            bucket=self.bucket,
            endpoint=self._endpoint(),
            attempts=self._attempts,
            read_timeout=self.read_timeout,
        )

    @contextmanager
    def _translated(self, op: str, key: str | None = None) -> Iterator[None]:
        try:
            yield
        except EarlyRepairError:
            raise
        except (BotoCoreError, ClientError, Boto3Error, TransferRetriesExceeded) as e:
            raise self._error(e, op, key) from e

    # -- the thread pool ------------------------------------------------------------------

    def _map(self, fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
        """``[fn(x) for x in items]`` on the pool; the first exception cancels the rest."""
        todo = list(items)
        if len(todo) <= 1:
            return [fn(x) for x in todo]
        self.client  # noqa: B018 - create the client once, before the threads race for it
        with ThreadPoolExecutor(
            min(self.max_workers, len(todo)), thread_name_prefix="s3store"
        ) as pool:
            futures = [pool.submit(fn, x) for x in todo]
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            failed = next((f for f in futures if f in done and f.exception()), None)
            if failed is not None:
                for f in futures:
                    f.cancel()
                raise failed.exception()  # type: ignore[misc]
            return [f.result() for f in futures]

    # -- the Store protocol -----------------------------------------------------------------

    def check(self) -> None:
        """Fail now, with the one-line error, if the bucket cannot be listed with these
        credentials at this endpoint - before a run creates anything."""
        with self._translated("list"):
            self.client.list_objects_v2(Bucket=self.bucket, Prefix=self._dir(""), MaxKeys=1)

    def exists(self, key: str) -> bool:
        full = self._full(key)
        try:
            with self._translated("head", key):
                self.client.head_object(Bucket=self.bucket, Key=full)
        except KeyMissing:
            return False
        return True

    def read_bytes(self, key: str, max_bytes: int | None = None) -> bytes:
        full = self._full(key)
        with self._translated("get", key):
            response = self.client.get_object(Bucket=self.bucket, Key=full)
            size = response.get("ContentLength")
            if max_bytes is not None and (not isinstance(size, int) or size > max_bytes):
                response["Body"].close()  # not a byte more than the headers
                raise ObjectTooLarge(
                    f"{self.uri}/{key}: {size:,} bytes, over the {max_bytes:,}-byte limit for it"
                    if isinstance(size, int)
                    else f"{self.uri}/{key}: the server did not say its size; not read"
                )
            try:
                return response["Body"].read()
            except STREAM_ERRORS as e:
                # The body broke off after the headers, which botocore's retries do not
                # cover; the managed download refetches with its own stream retries.
                log.info("%s/%s: body broke off (%s); refetching", self.uri, key, e)
                buffer = io.BytesIO()
                self.client.download_fileobj(self.bucket, full, buffer, Config=self.transfer_config)
                return buffer.getvalue()

    def write_bytes(self, key: str, data: bytes) -> None:
        full = self._full(key)
        with self._translated("put", key):
            self.client.put_object(Bucket=self.bucket, Key=full, Body=bytes(data))

    def upload_file(self, key: str, path: Path) -> None:
        full = self._full(key)
        path = Path(path)
        path.stat()  # a missing local file is the caller's OSError, as with FileStore
        with self._translated("upload", key):
            self.client.upload_file(str(path), self.bucket, full, Config=self.transfer_config)

    def download_file(self, key: str, path: Path) -> None:
        full = self._full(key)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # s3transfer writes a temporary file next to ``path`` and renames it when complete.
        with self._translated("download", key):
            self.client.download_file(self.bucket, full, str(path), Config=self.transfer_config)

    def list(self, prefix: str = "", delimiter: str | None = None) -> list[str]:
        base = self._dir(prefix)
        with self._translated("list", clean_key(prefix) or None):
            if delimiter:
                keys, rolled = self._list_all(base, delimiter)
                return sorted(self._safe([self._rel(k) for k in [*keys, *rolled]]))
            keys = self._list_under(base)
        out = sorted(self._safe([self._rel(k) for k in keys if not k.endswith("/")]))
        p = clean_key(prefix)
        if not out and p and self.exists(p):
            return [p]  # like FileStore: a prefix that names one object lists it
        return out

    def _safe(self, keys: list[str]) -> list[str]:
        """``keys`` without those that cannot be read back as themselves (``a/../b``): such
        a key is anyone's to write into a bucket; ``refused`` says which and why."""
        out = []
        for key in keys:
            # A rolled-up entry ends at its delimiter: judge the part before it.
            why = unsafe_key(key.rstrip("/") if key.endswith("/") else key)
            if why is None:
                out.append(key)
            else:
                self.refused[key] = why
        return out

    def _list_page(self, base: str, delimiter: str | None, token: str | None) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": base}
        if delimiter:
            kwargs["Delimiter"] = delimiter
        if token:
            kwargs["ContinuationToken"] = token
        return self.client.list_objects_v2(**kwargs)

    def _list_all(self, base: str, delimiter: str | None = None) -> tuple[list[str], list[str]]:
        """Every key below base, and with ``delimiter`` the keys rolled up at it (with "/":
        the sub-folders; CommonPrefixes)."""
        keys: list[str] = []
        folders: list[str] = []
        token = None
        while True:
            page = self._list_page(base, delimiter, token)
            keys += [o["Key"] for o in page.get("Contents", [])]
            folders += [p["Prefix"] for p in page.get("CommonPrefixes", [])]
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return keys, folders

    def _list_under(self, base: str) -> list[str]:
        """All keys below ``base``: one request when they fit in a page (1,000 keys); else
        the folders below are found and listed concurrently instead of page after page."""
        first = self._list_page(base, None, None)
        keys = [o["Key"] for o in first.get("Contents", [])]
        if not first.get("IsTruncated"):
            return keys
        keys, folders = self._list_all(base, "/")
        for _ in range(8):  # a single sub-folder (one sweep): look a level deeper
            if len(folders) != 1:
                break
            more, folders = self._list_all(folders[0], "/")
            keys += more
        for found in self._map(lambda f: self._list_all(f)[0], folders):
            keys += found
        return keys

    def read_many(
        self, keys: Iterable[str], max_bytes: Callable[[str], int | None] | None = None
    ) -> dict[str, bytes | Exception]:
        wanted = list(dict.fromkeys(keys))
        fatal: list[StoreUnavailable] = []

        def one(key: str) -> bytes | Exception:
            if fatal:  # no point hammering an endpoint we cannot use
                return fatal[0]
            try:
                return self.read_bytes(key, max_bytes(key) if max_bytes else None)
            except StoreUnavailable as e:
                fatal.append(e)
                return e
            except (EarlyRepairError, ValueError) as e:
                return e

        return dict(zip(wanted, self._map(one, wanted), strict=True))

    def delete_prefix(self, prefix: str) -> None:
        p = clean_key(prefix)
        with self._translated("list", p or None):
            doomed = self._list_under(self._dir(p))
        if p:
            doomed.append(self._full(p))  # the object the prefix itself may name
        batches = [doomed[i : i + 1000] for i in range(0, len(doomed), 1000)]

        def delete(batch: list[str]) -> None:
            with self._translated("delete", p or None):
                response = self.client.delete_objects(
                    Bucket=self.bucket,
                    Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True},
                )
            errors = response.get("Errors") or []
            if errors:
                first = errors[0]
                busy = is_transient(first.get("Code", ""), None)
                raise (TransientStoreError if busy else StoreError)(
                    f"{self.uri}/{self._rel(first.get('Key', ''))}: could not delete"
                    f" ({first.get('Code')}); {len(errors)} objects were left - check the"
                    " credentials' s3:DeleteObject permission"
                )

        self._map(delete, batches)
