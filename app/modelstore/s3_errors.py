"""Turn botocore exceptions into one-line pull errors that name the setting to change."""

from __future__ import annotations

from dataclasses import dataclass

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectionError,
    IncompleteReadError,
    NoCredentialsError,
    ParamValidationError,
    PartialCredentialsError,
    ProfileNotFound,
    ReadTimeoutError,
    ResponseStreamingError,
)

from app.modelstore.bucket_names import invalid_bucket_message
from app.modelstore.errors import ArtifactPullError

CREDENTIALS_HINT = (
    "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (plus AWS_SESSION_TOKEN for temporary "
    "credentials), or AWS_PROFILE naming a profile in ~/.aws/credentials or ~/.aws/config, "
    "or run with an instance or task role"
)
_REJECTED_CREDENTIALS = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
}
_ACCESS_DENIED = {"AccessDenied", "AllAccessDisabled", "403", "Forbidden"}


@dataclass(frozen=True)
class S3Location:
    """The bucket, prefix and object a failed call was about, for messages."""

    bucket: str
    prefix: str
    endpoint: str
    key: str | None = None

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.key if self.key is not None else self.prefix}"


def pull_error(error: Exception, operation: str, where: S3Location) -> ArtifactPullError:
    """Build the pull error for `error`, raised by S3 `operation` (e.g. "ListObjectsV2")."""
    if isinstance(error, NoCredentialsError):
        return ArtifactPullError(f"no AWS credentials found: {CREDENTIALS_HINT}")
    if isinstance(error, PartialCredentialsError | ProfileNotFound):
        return ArtifactPullError(f"incomplete AWS credentials ({error}): {CREDENTIALS_HINT}")
    if isinstance(error, ClientError):
        return ArtifactPullError(_client_error_message(error, operation, where))
    if isinstance(error, ReadTimeoutError | ResponseStreamingError | IncompleteReadError):
        return ArtifactPullError(
            f"reading {where.url} from {where.endpoint} was interrupted ({error}); "
            "run the pull again to resume"
        )
    if isinstance(error, ConnectionError | ConnectionClosedError):
        return ArtifactPullError(
            f"cannot reach the S3 endpoint {where.endpoint} ({error}); check --endpoint-url "
            "or AWS_ENDPOINT_URL, --region and the network"
        )
    if isinstance(error, ParamValidationError) and "Invalid bucket name" in str(error):
        return ArtifactPullError(invalid_bucket_message(where.bucket))
    if isinstance(error, BotoCoreError):
        # Some botocore messages, such as ParamValidationError's, span several lines.
        return ArtifactPullError(f"S3 {operation} on {where.url} failed: {_one_line(str(error))}")
    raise TypeError(f"not an AWS SDK error: {error!r}")


def _client_error_message(error: ClientError, operation: str, where: S3Location) -> str:
    details = error.response.get("Error", {})
    code = str(details.get("Code") or "")
    server_message = str(details.get("Message") or "").strip()
    status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")

    if code == "InvalidBucketName":
        return invalid_bucket_message(where.bucket)
    if code == "NoSuchBucket":
        return (
            f"bucket {where.bucket!r} does not exist at {where.endpoint} (NoSuchBucket): "
            "check --bucket or MODEL_BUCKET, --region and --endpoint-url"
        )
    if code in _REJECTED_CREDENTIALS:
        return (
            f"S3 rejected the AWS credentials ({code}: {server_message}): check "
            "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN or AWS_PROFILE"
        )
    if code in _ACCESS_DENIED or status == 403:
        return _access_denied_message(operation, where, server_message)
    if code in ("NoSuchKey", "404", "NotFound"):
        return f"{where.url} disappeared while the pull ran ({operation}); run the pull again"
    if code == "PreconditionFailed" or status == 412:
        return (
            f"{where.url} changed while it was being downloaded (its ETag no longer matches); "
            "run the pull again to fetch the new version from the start"
        )
    detail = f"{code}: {server_message}" if server_message else code or str(error)
    return f"S3 {operation} on {where.url} failed ({detail})"


def _access_denied_message(operation: str, where: S3Location, server_message: str) -> str:
    bucket_arn = f"arn:aws:s3:::{where.bucket}"
    objects_arn = f"{bucket_arn}/{where.prefix}*"
    suffix = f" (S3 said: {server_message})" if server_message else ""
    if operation == "ListObjectsV2":
        return (
            f"access denied listing {where.url}: the credentials need s3:ListBucket on "
            f"{bucket_arn} and s3:GetObject on {objects_arn}{suffix}"
        )
    return (
        f"access denied reading {where.url} ({operation}): the credentials need s3:GetObject "
        f"on {objects_arn}, and kms:Decrypt when the object is KMS-encrypted{suffix}"
    )


def _one_line(text: str) -> str:
    return " ".join(text.split())
