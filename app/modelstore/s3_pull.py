"""Pull every object under an S3 prefix into a folder, resumably and verified.

Each object is downloaded into `NAME.part` (see `partial.py`) by a GetObject that
carries `IfMatch` with the listed ETag. When an earlier run left a part of the same
object version, a `Range` request fetches only the rest. The part becomes `NAME` only
after its size and content digest match; `checksums.py` chooses the expected digest.
A file already present with the expected size and digest is skipped without any
GetObject. When a resumed download fails verification, it is downloaded once more
from the start; a second mismatch is an error.

The credentials, region and endpoint come from boto3's usual sources (environment,
shared files, instance or task role); AWS_ENDPOINT_URL works through boto3 itself.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from tqdm import tqdm

from app.modelstore.bucket_names import check_bucket_name
from app.modelstore.checksums import (
    MANIFEST_NAME,
    ExpectedContent,
    VerifiedBy,
    expected_from_head,
    matches,
    parse_manifest,
)
from app.modelstore.errors import ArtifactPullError, ChecksumMismatchError
from app.modelstore.partial import MARKER_SUFFIX, PART_SUFFIX, PartialDownload
from app.modelstore.s3_errors import S3Location, pull_error

logger = logging.getLogger(__name__)

DEFAULT_DESTINATION = Path("model/artifacts")
CHUNK_BYTES = 1024 * 1024
_CLIENT_CONFIG = Config(
    connect_timeout=10,
    read_timeout=60,
    retries={"max_attempts": 3, "mode": "standard"},
)

T = TypeVar("T")


@dataclass(frozen=True)
class RemoteObject:
    """One object under the prefix: its key, its name relative to the prefix, size and ETag."""

    key: str
    name: str
    size: int
    etag: str


@dataclass(frozen=True)
class PulledFile:
    """The outcome for one artifact."""

    name: str
    size: int
    action: Literal["downloaded", "skipped"]
    verified_by: VerifiedBy
    bytes_transferred: int
    # Why only the size could be checked; None unless verified_by is SIZE_ONLY.
    unverified_reason: str | None = None


@dataclass(frozen=True)
class PullSummary:
    """The outcome of a pull, file by file, with the totals the command prints."""

    destination: Path
    files: tuple[PulledFile, ...] = field(default_factory=tuple)

    @property
    def downloaded(self) -> list[str]:
        return [item.name for item in self.files if item.action == "downloaded"]

    @property
    def skipped(self) -> list[str]:
        return [item.name for item in self.files if item.action == "skipped"]

    @property
    def bytes_transferred(self) -> int:
        return sum(item.bytes_transferred for item in self.files)

    @property
    def size_only(self) -> list[PulledFile]:
        """The files whose content could not be verified, only their size."""
        return [item for item in self.files if item.verified_by is VerifiedBy.SIZE_ONLY]

    def by_name(self, name: str) -> PulledFile:
        """Return the outcome for artifact `name`; raise KeyError when it was not pulled."""
        for item in self.files:
            if item.name == name:
                return item
        raise KeyError(name)


def make_s3_client(endpoint_url: str | None = None, region: str | None = None) -> Any:
    """Build an S3 client from boto3's credential chain, with short connect timeouts."""
    try:
        session = boto3.session.Session(region_name=region)
        return session.client("s3", endpoint_url=endpoint_url, config=_CLIENT_CONFIG)
    except BotoCoreError as error:
        where = S3Location(bucket="", prefix="", endpoint=endpoint_url or "AWS S3")
        raise pull_error(error, "client set-up", where) from None
    except ValueError as error:  # botocore rejects a malformed endpoint URL this way
        raise ArtifactPullError(f"invalid S3 endpoint URL {endpoint_url!r}: {error}") from None


def pull_artifacts(
    bucket: str,
    prefix: str = "",
    destination: Path = DEFAULT_DESTINATION,
    *,
    client: Any | None = None,
    endpoint_url: str | None = None,
    region: str | None = None,
    progress: bool = True,
) -> PullSummary:
    """Pull every object under s3://`bucket`/`prefix`/ into `destination`.

    `prefix` names a folder: "models/v1" and "models/v1/" both select the keys that
    start with "models/v1/". Progress bars go to stderr unless `progress` is false.
    Raises ArtifactPullError (ChecksumMismatchError for a failed verification).
    """
    check_bucket_name(bucket)
    s3 = client if client is not None else make_s3_client(endpoint_url, region)
    puller = _Puller(s3, bucket, _folder_prefix(prefix), destination, progress)
    return puller.run()


def _folder_prefix(prefix: str) -> str:
    stripped = prefix.strip("/")
    return f"{stripped}/" if stripped else ""


class _Puller:
    """One pull run: lists the prefix, then pulls the manifest and every other object."""

    def __init__(self, client: Any, bucket: str, prefix: str, destination: Path, progress: bool):
        self.client = client
        self.bucket = bucket
        self.prefix = prefix
        self.destination = destination
        self.progress = progress
        self.endpoint = str(client.meta.endpoint_url)

    def run(self) -> PullSummary:
        _check_writable(self.destination)
        objects = self._list_objects()
        if not objects:
            raise ArtifactPullError(
                f"no objects under s3://{self.bucket}/{self.prefix}: check --prefix or "
                "MODEL_PREFIX, and that the artifacts were uploaded"
            )

        manifest: dict[str, str] = {}
        pulled: list[PulledFile] = []
        if MANIFEST_NAME in objects:
            manifest_object = objects.pop(MANIFEST_NAME)
            pulled.append(self._pull_object(manifest_object, {}))
            manifest = self._read_manifest(objects)

        for remote in objects.values():
            pulled.append(self._pull_object(remote, manifest))
        summary = PullSummary(destination=self.destination, files=tuple(pulled))
        logger.info(
            "artifact pull finished bucket=%s prefix=%s downloaded=%d skipped=%d bytes=%d",
            self.bucket,
            self.prefix,
            len(summary.downloaded),
            len(summary.skipped),
            summary.bytes_transferred,
        )
        return summary

    # Listing and the manifest

    def _list_objects(self) -> dict[str, RemoteObject]:
        paginator = self.client.get_paginator("list_objects_v2")
        pages = paginator.paginate(Bucket=self.bucket, Prefix=self.prefix)
        objects: dict[str, RemoteObject] = {}
        for page in self._call("ListObjectsV2", None, lambda: list(pages)):
            for entry in page.get("Contents", []):
                key = entry["Key"]
                if key.endswith("/"):
                    continue  # a folder marker that consoles create
                name = self._artifact_name(key)
                objects[name] = RemoteObject(key, name, int(entry["Size"]), entry["ETag"])
        return dict(sorted(objects.items()))

    def _artifact_name(self, key: str) -> str:
        name = key[len(self.prefix) :]
        parts = PurePosixPath(name).parts
        if not parts or any(part in ("", ".", "..") for part in parts) or name.startswith("/"):
            raise ArtifactPullError(f"refusing s3://{self.bucket}/{key}: unsafe file name {name!r}")
        if name.endswith((PART_SUFFIX, MARKER_SUFFIX)):
            raise ArtifactPullError(
                f"refusing s3://{self.bucket}/{key}: names ending in {PART_SUFFIX} or "
                f"{MARKER_SUFFIX} are reserved for partial downloads"
            )
        return name

    def _read_manifest(self, objects: dict[str, RemoteObject]) -> dict[str, str]:
        path = self.destination / MANIFEST_NAME
        try:
            manifest = parse_manifest(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as error:
            raise ArtifactPullError(
                f"invalid {MANIFEST_NAME} in s3://{self.bucket}/{self.prefix}: {error}"
            ) from None
        missing = sorted(set(manifest) - set(objects))
        if missing:
            raise ArtifactPullError(
                f"{MANIFEST_NAME} lists {', '.join(missing)}, which s3://{self.bucket}/"
                f"{self.prefix} does not contain: upload the missing files or fix the manifest"
            )
        return manifest

    # One object

    def _pull_object(self, remote: RemoteObject, manifest: dict[str, str]) -> PulledFile:
        expected = self._expected_content(remote, manifest)
        target = self.destination / remote.name
        if expected.verified_by is VerifiedBy.SIZE_ONLY:
            # INFO, not WARNING: the summary lists these files and the command warns about them.
            logger.info(
                "artifact verified by size only name=%s reason=%s", remote.name, expected.reason
            )

        if target.is_file() and matches(target, expected)[0]:
            self._note(f"{remote.name}: present and verified ({expected.verified_by}), skipped")
            return self._outcome(remote, expected, "skipped", 0)

        transferred = self._download(remote, expected, target)
        logger.info(
            "artifact downloaded name=%s bytes=%d verified_by=%s",
            remote.name,
            transferred,
            expected.verified_by,
        )
        return self._outcome(remote, expected, "downloaded", transferred)

    def _expected_content(self, remote: RemoteObject, manifest: dict[str, str]) -> ExpectedContent:
        if remote.name in manifest:
            hex_digest = manifest[remote.name]
            return ExpectedContent(remote.size, VerifiedBy.MANIFEST, "sha256", hex_digest)
        head = self._call(
            "HeadObject",
            remote.key,
            lambda: self.client.head_object(
                Bucket=self.bucket, Key=remote.key, IfMatch=remote.etag, ChecksumMode="ENABLED"
            ),
        )
        return expected_from_head(remote.size, head)

    def _download(self, remote: RemoteObject, expected: ExpectedContent, target: Path) -> int:
        partial = PartialDownload(target)
        start = partial.resumable_bytes(remote.etag, remote.size)
        if start is None:
            start = 0
            self._write(partial.part, lambda: partial.start(remote.etag, remote.size))
        elif start:
            logger.info("artifact download resumed name=%s offset=%d", remote.name, start)

        transferred = self._fetch(remote, partial, start)
        matched, actual = matches(partial.part, expected)
        if not matched and start > 0:
            # INFO, not WARNING: the note below prints this event unless --quiet, and the CLI
            # configures no logging, so a WARNING would reach stderr a second time through the
            # last-resort handler.
            logger.info(
                "resumed artifact failed verification, downloading it again name=%s", remote.name
            )
            self._note(f"resumed {remote.name} failed verification, downloading it from the start")
            self._write(partial.part, lambda: partial.start(remote.etag, remote.size))
            transferred += self._fetch(remote, partial, 0)
            matched, actual = matches(partial.part, expected)

        if not matched:
            actual_size = partial.part.stat().st_size
            partial.discard()
            raise ChecksumMismatchError(
                self._mismatch_message(remote, expected, actual_size, actual)
            )
        self._write(target, partial.finish)
        return transferred

    def _fetch(self, remote: RemoteObject, partial: PartialDownload, start: int) -> int:
        """Append bytes `start`.. of the object version `remote.etag` to the part file."""
        if start >= remote.size:
            if start:
                self._note(f"resumed {remote.name} at {start} bytes, the download is complete")
            return 0
        request: dict[str, Any] = {"Bucket": self.bucket, "Key": remote.key, "IfMatch": remote.etag}
        if start:
            request["Range"] = f"bytes={start}-"
        response = self._call("GetObject", remote.key, lambda: self.client.get_object(**request))
        if start and not str(response.get("ContentRange", "")).startswith(f"bytes {start}-"):
            # The endpoint ignored the Range header and sends the whole object.
            self._note(f"{self.endpoint} ignored the range request, so {remote.name} starts over")
            self._write(partial.part, lambda: partial.start(remote.etag, remote.size))
            start = 0
        if start:
            self._note(f"resumed {remote.name} at {start} bytes")

        written = 0
        try:
            with self._bar(remote, start) as bar, partial.part.open("ab") as output:
                for chunk in _chunks(response["Body"]):
                    output.write(chunk)
                    written += len(chunk)
                    bar.update(len(chunk))
        except (BotoCoreError, ClientError) as error:
            where = S3Location(self.bucket, self.prefix, self.endpoint, remote.key)
            raise pull_error(error, "GetObject", where) from None
        except OSError as error:
            reason = error.strerror or str(error)
            raise ArtifactPullError(f"cannot write {partial.part}: {reason}") from None
        return written

    # Helpers

    def _call(self, operation: str, key: str | None, action: Callable[[], T]) -> T:
        try:
            return action()
        except (BotoCoreError, ClientError) as error:
            where = S3Location(self.bucket, self.prefix, self.endpoint, key)
            raise pull_error(error, operation, where) from None

    def _write(self, path: Path, action: Callable[[], object]) -> None:
        try:
            action()
        except OSError as error:
            raise ArtifactPullError(f"cannot write {path}: {error.strerror or error}") from None

    def _bar(self, remote: RemoteObject, start: int) -> tqdm:
        return tqdm(
            total=remote.size,
            initial=start,
            desc=remote.name,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            file=sys.stderr,
            disable=not self.progress,
            leave=True,
        )

    def _note(self, message: str) -> None:
        if self.progress:
            tqdm.write(message, file=sys.stderr)

    def _outcome(
        self,
        remote: RemoteObject,
        expected: ExpectedContent,
        action: Literal["downloaded", "skipped"],
        transferred: int,
    ) -> PulledFile:
        return PulledFile(
            name=remote.name,
            size=remote.size,
            action=action,
            verified_by=expected.verified_by,
            bytes_transferred=transferred,
            unverified_reason=expected.reason,
        )

    def _mismatch_message(
        self, remote: RemoteObject, expected: ExpectedContent, actual_size: int, actual: str | None
    ) -> str:
        source = f"s3://{self.bucket}/{remote.key}"
        if actual_size != expected.size:
            return (
                f"size mismatch for {remote.name} ({source}): expected {expected.size} bytes, "
                f"got {actual_size}; the partial file was deleted"
            )
        return (
            f"checksum mismatch for {remote.name} ({source}): expected {expected.algorithm} "
            f"{expected.hex_digest} ({expected.verified_by}), got {actual}; the partial file "
            "was deleted"
        )


def _chunks(body: Any) -> Iterator[bytes]:
    """Read a streaming body chunk by chunk; botocore raises on a short or broken stream."""
    with contextlib.closing(body):
        yield from body.iter_chunks(CHUNK_BYTES)


def _check_writable(destination: Path) -> None:
    """Create `destination` and prove that a file can be written there."""
    try:
        destination.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=destination):
            pass
    except OSError as error:
        reason = error.strerror or str(error)
        raise ArtifactPullError(
            f"destination {destination} is not writable ({reason}): choose another --dest "
            "or fix its permissions"
        ) from None
