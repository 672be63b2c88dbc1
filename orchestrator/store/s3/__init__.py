"""S3 and S3-compatible object storage (AWS S3, MinIO, Ceph RGW, ...) behind the Store protocol.

A package so that each part stays small enough to read: ``store`` is the ``S3Store`` itself
(client, transfers, listing, the thread pool), ``errors`` turns boto3/botocore failures into
our one-line errors, ``uri`` parses ``s3://bucket/prefix``. The names other code imports are
re-exported here, so ``from orchestrator.store.s3 import S3Store`` is the public path.
Importing this package loads boto3; ``orchestrator.store.open_store`` imports it only for
``s3://`` URIs.
"""

from orchestrator.store.s3.errors import EndpointUnreachable, StoreUnavailable
from orchestrator.store.s3.store import DEFAULT_MAX_ATTEMPTS, DEFAULT_WORKERS, S3Client, S3Store
from orchestrator.store.s3.uri import BUCKET_RULES, parse_s3_uri

__all__ = [
    "BUCKET_RULES",
    "DEFAULT_MAX_ATTEMPTS",
    "DEFAULT_WORKERS",
    "EndpointUnreachable",
    "S3Client",
    "S3Store",
    "StoreUnavailable",
    "parse_s3_uri",
]
