"""Expected content of an S3 artifact, and digests of local files to compare against it.

The strongest available evidence wins, in this order: an entry of a `SHA256SUMS`
manifest stored under the same prefix, the object's full-object `ChecksumSHA256`,
the MD5 digest that a single-part upload's ETag is, and finally the size alone.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

MANIFEST_NAME = "SHA256SUMS"

_HASH_CHUNK_BYTES = 1024 * 1024
_HEX_DIGEST = {"sha256": re.compile(r"^[0-9a-f]{64}$"), "md5": re.compile(r"^[0-9a-f]{32}$")}
# `sha256sum` writes "<hex>  <name>" for text mode and "<hex> *<name>" for binary mode.
_MANIFEST_LINE = re.compile(r"^\\?([0-9a-fA-F]{64}) [ *](.+)$")


class VerifiedBy(StrEnum):
    """Source of an artifact's expected content, strongest first."""

    MANIFEST = "sha256sums"
    CHECKSUM_SHA256 = "checksum-sha256"
    ETAG_MD5 = "etag-md5"
    SIZE_ONLY = "size-only"


@dataclass(frozen=True)
class ExpectedContent:
    """The size an artifact must have and, unless verified by size only, its digest."""

    size: int
    verified_by: VerifiedBy
    algorithm: str | None = None  # "sha256" or "md5"
    hex_digest: str | None = None
    # Why nothing stronger than the size was available, for the size-only warning.
    reason: str | None = None

    def __post_init__(self) -> None:
        if (self.algorithm is None) != (self.verified_by is VerifiedBy.SIZE_ONLY):
            raise ValueError("only a size-only expectation may lack a digest algorithm")
        if self.algorithm is not None:
            pattern = _HEX_DIGEST.get(self.algorithm)
            if pattern is None or not pattern.match(self.hex_digest or ""):
                raise ValueError(f"invalid {self.algorithm} hex digest: {self.hex_digest!r}")


def parse_manifest(text: str) -> dict[str, str]:
    """Parse `sha256sum` output into {relative name: lowercase hex digest}.

    Blank lines and `#` comments are skipped. A line that `sha256sum` escaped (it
    starts with a backslash) has `\\\\` and `\\n` in its name decoded.
    """
    entries: dict[str, str] = {}
    for number, raw_line in enumerate(text.splitlines(), start=1):
        line = raw_line.rstrip("\r")
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _MANIFEST_LINE.match(line)
        if match is None:
            raise ValueError(f"{MANIFEST_NAME} line {number} is not `<sha256 hex>  <name>`")
        name = match.group(2)
        if line.startswith("\\"):
            name = name.replace("\\n", "\n").replace("\\\\", "\\")
        entries[name.removeprefix("./")] = match.group(1).lower()
    return entries


def expected_from_head(size: int, head: Mapping[str, Any]) -> ExpectedContent:
    """Choose the expected content from a HeadObject response (ChecksumMode=ENABLED)."""
    etag = str(head.get("ETag") or "").strip('"')
    multipart = "-" in etag

    checksum = head.get("ChecksumSHA256")
    checksum_type = head.get("ChecksumType")
    # A multipart SHA-256 checksum is a checksum of the part checksums ("<b64>-<parts>" on
    # AWS). Moto 5.2 omits both the suffix and ChecksumType, so the ETag decides there.
    composite = checksum_type == "COMPOSITE" or (checksum_type is None and multipart)
    if checksum and "-" not in checksum and not composite:
        hex_digest = _base64_to_hex(checksum)
        if hex_digest is not None:
            return ExpectedContent(size, VerifiedBy.CHECKSUM_SHA256, "sha256", hex_digest)

    # With SSE-KMS or SSE-C the ETag is not the MD5 digest of the content.
    encrypted = head.get("ServerSideEncryption") in ("aws:kms", "aws:kms:dsse") or bool(
        head.get("SSECustomerAlgorithm")
    )
    if etag and not multipart and not encrypted and _HEX_DIGEST["md5"].match(etag.lower()):
        return ExpectedContent(size, VerifiedBy.ETAG_MD5, "md5", etag.lower())

    if multipart:
        reason = "multipart ETag and no full-object ChecksumSHA256"
    elif encrypted:
        reason = "KMS or customer-key encryption makes the ETag no MD5 digest"
    else:
        reason = "no usable ETag and no ChecksumSHA256"
    return ExpectedContent(size, VerifiedBy.SIZE_ONLY, reason=f"no {MANIFEST_NAME} entry, {reason}")


def file_hex_digest(path: Path, algorithm: str) -> str:
    """Return the hex digest of the file at `path`, read in 1 MiB chunks."""
    digest = hashlib.new(algorithm)
    with path.open("rb") as stream:
        while chunk := stream.read(_HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def matches(path: Path, expected: ExpectedContent) -> tuple[bool, str | None]:
    """Check the file at `path` against `expected`; return (match, the file's hex digest)."""
    if path.stat().st_size != expected.size:
        return False, None
    if expected.algorithm is None:
        return True, None
    actual = file_hex_digest(path, expected.algorithm)
    return actual == expected.hex_digest, actual


def _base64_to_hex(value: str) -> str | None:
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw.hex() if len(raw) == hashlib.sha256().digest_size else None
