"""Endpoint URLs given by the user: checked once, before they are used or written anywhere.

A URL with ``user:password@`` in it would travel into ``sweep.json``/``run.json`` in the
bucket, the local state, a ConfigMap and pod environments in plain text; credentials
belong in the AWS credential chain instead, so such a URL is refused - with a message that
never repeats the secret. The spec (``storage.endpoint_url``), every ``--endpoint-url`` flag
and the S3 store all use these checks. Kept free of boto3 so the spec can import it.
"""

from __future__ import annotations

from urllib.parse import urlparse

from orchestrator.errors import BadInput

ENDPOINT_FIELDS = "storage.endpoint_url or --endpoint-url"


def redact(url: str) -> str:
    """``url`` without any user:password@ part, for messages. Everything up to the last '@'
    goes: a secret may itself contain '/' (AWS secret keys do), which ends the host part
    for ``urlparse`` and would leave the rest of the secret in the "path"."""
    if "@" not in url:
        return url
    scheme, sep, _rest = url.partition("://")
    return f"{scheme}{sep if sep else ''}***@{url.rpartition('@')[2]}"


def credentials_problem(url: str) -> str | None:
    """Why ``url`` may not be used (it carries ``user:password@``), or None. Any '@' counts:
    an endpoint has no path where one could legitimately appear."""
    if "@" not in url:
        return None
    return (
        f"credentials do not belong in a URL ({redact(url)!r}); set AWS_ACCESS_KEY_ID and"
        " AWS_SECRET_ACCESS_KEY (or a profile) instead"
    )


def uri_credentials_problem(uri: str) -> str | None:
    """Like ``credentials_problem`` for a storage URI (``s3://KEY:SECRET@bucket/prefix``),
    whose key prefix may hold an '@' of its own: credentials are an '@' in the host part, or
    a ':' there with an '@' further on (a secret with a '/' in it)."""
    _scheme, sep, rest = uri.partition("://")
    host = rest.split("/", 1)[0] if sep else ""
    if "@" in host or (":" in host and "@" in rest):
        return credentials_problem(uri)
    return None


def endpoint_problem(url: str) -> str | None:
    """Why ``url`` is not an S3 endpoint ``http(s)://host[:port]``, or None."""
    problem = credentials_problem(url)
    if problem:
        return problem
    try:
        parsed = urlparse(url)
        parsed.port  # noqa: B018 - raises ValueError for a port that is not a number
        ok = parsed.scheme in ("http", "https") and bool(parsed.hostname)
    except ValueError:
        ok = False
    if ok and parsed.path in ("", "/") and not (parsed.query or parsed.fragment):
        return None
    return (
        f"endpoint URL {url!r} is not valid: write http(s)://host[:port], e.g."
        " http://minio.minio.svc:9000"
    )


def check_endpoint(url: str, field: str = ENDPOINT_FIELDS) -> str:
    """``url`` without a trailing '/'; BadInput naming ``field`` when it is no endpoint."""
    problem = endpoint_problem(url)
    if problem:
        raise BadInput(f"{field}: {problem}")
    return url.rstrip("/")
