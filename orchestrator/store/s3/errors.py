"""What a failed S3 call means for the user: boto3/botocore errors -> our one-line errors.

Kept apart from the store because the judgement is a table, not I/O: which answers mean
"no such key", "wrong credentials", "wrong region", "the server is busy" or "refused", and
what each message tells the user to fix. Messages name the URI, the endpoint and the fix,
never a secret: permanent failures (a missing bucket, wrong credentials, a refused request)
are ``StoreError``/``BadInput`` (exit code 2); what botocore's retries could not ride out
(5xx, throttling, refused or timed-out connections, bodies cut short) is
``TransientStoreError`` (exit code 69, ``EXIT_TRANSIENT``), which a Kubernetes Job retries.
"""

from __future__ import annotations

from boto3.exceptions import Boto3Error, RetriesExceededError
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    CredentialRetrievalError,
    IncompleteReadError,
    NoCredentialsError,
    PartialCredentialsError,
    ReadTimeoutError,
    ResponseStreamingError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError
from s3transfer.exceptions import RetriesExceededError as TransferRetriesExceeded

from orchestrator.errors import BadInput, EarlyRepairError, StoreError, TransientStoreError
from orchestrator.store.base import KeyMissing
from orchestrator.store.s3.uri import BUCKET_RULES

# A key or bucket that is not there. HEAD answers carry no body, hence the bare statuses.
_MISSING_KEY = {"NoSuchKey", "NotFound", "404"}
_KEY_OPS = {"head", "get", "download"}  # operations on one key, where 404 means no such key
_AUTH_CODES = {
    "InvalidAccessKeyId": "the access key id is not known to the server; check"
    " AWS_ACCESS_KEY_ID (or the profile in AWS_PROFILE)",
    "SignatureDoesNotMatch": "the secret access key does not belong to the access key id;"
    " check AWS_SECRET_ACCESS_KEY (or the profile in AWS_PROFILE)",
    "AccessDenied": "access denied; give these credentials read and write access to the"
    " bucket and prefix (s3:ListBucket, s3:GetObject, s3:PutObject, s3:DeleteObject)",
    "AllAccessDisabled": "all access to this bucket has been disabled; use another bucket",
    "403": "access denied (HTTP 403); check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY and that"
    " they may read and write the bucket",
    "Forbidden": "access denied (HTTP 403); check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY and"
    " that they may read and write the bucket",
    "ExpiredToken": "the session token has expired; refresh the credentials"
    " (AWS_SESSION_TOKEN, `aws sso login`, or the pod's role)",
    "InvalidToken": "the session token is not valid; check AWS_SESSION_TOKEN",
    "TokenRefreshRequired": "the session token must be refreshed; renew the credentials",
}
_REGION_CODES = {
    "PermanentRedirect",
    "AuthorizationHeaderMalformed",
    "IllegalLocationConstraintException",
    "301",
}
# A body that broke off mid-stream: the managed download refetches it with its own retries.
STREAM_ERRORS = (IncompleteReadError, ResponseStreamingError, ReadTimeoutError)


# Answers that mean "the server is busy or failing, not you": after botocore's retries these
# are transient (exit 69, retried by the podFailurePolicy), every other refusal is permanent.
_TRANSIENT_CODES = {
    "InternalError",
    "ServiceUnavailable",
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestThrottled",
    "TooManyRequests",
    "RequestTimeout",
    "RequestTimeoutException",
    "PriorRequestNotComplete",
    "OperationAborted",
}


def is_transient(code: str, status: object) -> bool:
    """Whether an error code or HTTP status means the server is busy or failing."""
    busy = isinstance(status, int) and (status >= 500 or status == 429)
    return busy or code in _TRANSIENT_CODES


class StoreUnavailable(StoreError):
    """The store as a whole cannot be used (credentials, bucket, endpoint): retrying other
    keys cannot help, so bulk operations stop at the first one."""


class EndpointUnreachable(StoreUnavailable, TransientStoreError):
    """No connection to the endpoint (refused, reset, timed out) after botocore's retries:
    the whole store is out of reach, but perhaps only until the server is back."""

    exit_code = TransientStoreError.exit_code


def root_cause(e: BaseException) -> BaseException:
    """The botocore error under boto3's transfer wrappers (S3UploadFailedError, ...)."""
    seen: set[int] = set()
    while id(e) not in seen:
        seen.add(id(e))
        if (
            isinstance(e, RetriesExceededError | TransferRetriesExceeded)
            and e.last_exception is not None
        ):
            e = e.last_exception
        elif isinstance(e, Boto3Error) and (e.__cause__ or e.__context__):
            e = e.__cause__ or e.__context__  # type: ignore[assignment]
        else:
            break
    return e


def translate(
    e: BaseException,
    op: str,
    key: str | None,
    *,
    uri: str,
    bucket: str,
    endpoint: str,
    attempts: int,
    read_timeout: float,
) -> EarlyRepairError:
    """Our one-line error for a boto3/botocore failure of ``op`` on ``key`` (None: the store
    as a whole) under ``uri``; ``endpoint`` is already redacted. Never includes credentials."""
    where = f"{uri}/{key}" if key else uri
    root = root_cause(e)
    if isinstance(root, NoCredentialsError | PartialCredentialsError):
        return StoreUnavailable(
            f"{where}: no AWS credentials found ({type(root).__name__}); set"
            " AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or give the pod"
            " a role (IRSA)"
        )
    if isinstance(root, CredentialRetrievalError):
        return StoreUnavailable(
            f"{where}: the AWS credential provider failed ({type(root).__name__}); check"
            " the profile's credential_process, SSO login or the pod's role"
        )
    if isinstance(root, BotoConnectionError | ConnectionClosedError | ReadTimeoutError):
        what = (
            f"no answer within {read_timeout:g} s from"
            if isinstance(root, ReadTimeoutError)
            else "cannot connect to"
        )
        return EndpointUnreachable(
            f"{where}: {what} the S3 endpoint {endpoint} after {attempts}"
            f" attempts ({type(root).__name__}); check --endpoint-url,"
            " storage.endpoint_url or AWS_ENDPOINT_URL and that the server is up"
        )
    if isinstance(root, IncompleteReadError | ResponseStreamingError):
        return TransientStoreError(
            f"{where}: the connection broke while reading the object"
            f" ({type(root).__name__}) even after retries; try again"
        )
    if isinstance(root, ClientError):
        return _client_error(root, op, where, bucket, endpoint)
    return StoreError(f"{where}: S3 {op} failed ({type(root).__name__})")


def _client_error(
    e: ClientError, op: str, where: str, bucket: str, endpoint: str
) -> EarlyRepairError:
    err = e.response.get("Error", {})
    meta = e.response.get("ResponseMetadata", {})
    code = str(err.get("Code") or meta.get("HTTPStatusCode") or "unknown")
    status = meta.get("HTTPStatusCode")
    attempts = int(meta.get("RetryAttempts", 0)) + 1
    if op in _KEY_OPS and code in _MISSING_KEY:
        return KeyMissing(f"{where}: not found")
    if code in ("NoSuchBucket", "404"):
        return StoreUnavailable(
            f"{where}: bucket {bucket!r} does not exist at {endpoint}; create it"
            f" (`aws s3 mb s3://{bucket}` or `mc mb`) or fix the results URI"
        )
    if code in _AUTH_CODES:
        return StoreUnavailable(f"{where}: {_AUTH_CODES[code]} ({code} from {endpoint})")
    if code in _REGION_CODES:
        return StoreUnavailable(
            f"{where}: the bucket lives in another region ({code}); set storage.region"
            " or AWS_REGION to the bucket's region"
        )
    if code == "InvalidBucketName":
        return BadInput(f"{where}: {bucket!r} is not a valid bucket name ({BUCKET_RULES})")
    retried = f" after {attempts} attempts" if attempts > 1 else ""
    message = " ".join(str(err.get("Message", "")).split())[:200]
    detail = f": {message}" if message else ""
    if is_transient(code, status):
        return TransientStoreError(
            f"{where}: S3 {op} failed{retried} with {code} (HTTP {status}){detail}; the"
            " server is overloaded or failing: try again later"
        )
    return StoreError(
        f"{where}: S3 {op} refused with {code} (HTTP {status}){detail}; check the"
        " results URI, storage settings and the credentials' permissions"
    )
