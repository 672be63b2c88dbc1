"""``s3://bucket/prefix`` URIs: parsing and S3's bucket-naming rules.

Kept apart from the store because a URI is judged before any client exists (and without
boto3): a malformed one is bad input (exit 2) that names the fix, and credentials written
into it are refused before anything could log them.
"""

from __future__ import annotations

import re
from urllib.parse import urlparse

from orchestrator.errors import BadInput
from orchestrator.store.base import clean_key
from orchestrator.urls import redact, uri_credentials_problem

# S3's rules for bucket names (https://docs.aws.amazon.com/AmazonS3/latest/userguide/
# bucketnamingrules.html); MinIO applies the same ones.
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_IPV4 = re.compile(r"^\d{1,3}(\.\d{1,3}){3}$")
BUCKET_RULES = (
    "3-63 characters: lower-case letters, digits, '.' and '-', starting and ending with a"
    " letter or digit"
)


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> ("bucket", "some/prefix"); BadInput when malformed."""
    shown = redact(uri)
    try:
        parsed = urlparse(uri.strip())
    except ValueError as e:  # e.g. an unbalanced '[' where the bucket should be
        raise BadInput(f"{shown!r}: not a valid URI; write s3://bucket/prefix") from e
    if parsed.scheme.lower() != "s3":
        raise BadInput(f"{shown}: not an S3 URI; write s3://bucket/prefix")
    if uri_credentials_problem(uri.strip()):
        raise BadInput(
            f"{shown}: credentials do not belong in the URI; set AWS_ACCESS_KEY_ID and"
            " AWS_SECRET_ACCESS_KEY (or a profile) instead"
        )
    if parsed.query or parsed.fragment or parsed.params:
        raise BadInput(
            f"{shown}: an S3 URI takes no '?', ';' or '#' part; write s3://bucket/prefix"
        )
    bucket = parsed.netloc
    if not bucket:
        raise BadInput(f"{shown}: the URI names no bucket; write s3://bucket/prefix")
    if not _BUCKET.match(bucket) or ".." in bucket or _IPV4.match(bucket):
        raise BadInput(f"{shown}: {bucket!r} is not a valid bucket name ({BUCKET_RULES})")
    try:
        prefix = clean_key(parsed.path)
    except ValueError as e:
        raise BadInput(f"{shown}: the prefix may not contain '..'") from e
    return bucket, prefix
