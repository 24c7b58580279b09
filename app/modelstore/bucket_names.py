"""S3 bucket name checks, so that a mistyped --bucket fails with one line before any request."""

from __future__ import annotations

import re

from app.modelstore.errors import ArtifactPullError

BUCKET_NAME_RULE = (
    "a bucket name is 3 to 63 lowercase letters, digits, dots and hyphens (older us-east-1 "
    "buckets may also contain uppercase letters and underscores), or an S3 access point ARN"
)
# The characters and length that botocore 1.x accepts in the Bucket parameter. A name
# outside them makes botocore raise a multi-line ParamValidationError. Stricter rules,
# such as the 63-character limit, are left to the server because legacy buckets break them.
_CLIENT_BUCKET_NAME = re.compile(r"^[A-Za-z0-9._-]{1,255}$")
# botocore checks the form of an ARN itself, and pull_error turns its complaint into one line.
_ARN_PREFIX = "arn:"


def check_bucket_name(bucket: str) -> None:
    """Raise ArtifactPullError, in one line, for a bucket name that S3 clients reject."""
    if _CLIENT_BUCKET_NAME.match(bucket) or bucket.startswith(_ARN_PREFIX):
        return
    raise ArtifactPullError(invalid_bucket_message(bucket))


def invalid_bucket_message(bucket: str) -> str:
    """Build the error for an invalid bucket name: the name, the rule and the likely fix."""
    message = f"invalid bucket name {bucket!r}: {BUCKET_NAME_RULE}"
    if bucket.startswith("s3://") or "/" in bucket:
        message += ". Pass the bucket alone as --bucket and the folder inside it as --prefix"
    return message
