"""API keys: generated once, stored as SHA-256 digests in the settings, checked in constant time.

A key is 32 random bytes, so a plain SHA-256 digest is enough to store it: a
slow password hash protects guessable secrets, and these cannot be guessed.
The API_KEYS setting lists one entry per key, separated by semicolons:
`NAME:SCOPE,SCOPE:SHA256HEX`, for example `ci:generate:9f86d0...`.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

__all__ = [
    "SCOPES",
    "ApiKey",
    "ApiKeyError",
    "digest",
    "find_key",
    "new_key",
    "parse_api_keys",
]

# generate: POST /api/inference/generate-plan. metrics: the service's state (/ready, metrics).
SCOPES = ("generate", "metrics")
KEY_PREFIX = "psk_"
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_DIGEST = re.compile(r"[0-9a-f]{64}")


class ApiKeyError(ValueError):
    """An API_KEYS entry or a key name that cannot be used."""


@dataclass(frozen=True, slots=True)
class ApiKey:
    """One configured key: its name for logs, its scopes and the digest of its secret."""

    name: str
    scopes: frozenset[str]
    digest: str

    def entry(self) -> str:
        """Return the key's API_KEYS entry."""
        return f"{self.name}:{','.join(sorted(self.scopes))}:{self.digest}"


def digest(key: str) -> str:
    """Return the hex SHA-256 digest of a key."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key(name: str, scopes: list[str]) -> tuple[str, ApiKey]:
    """Create a random key; return the secret, shown once, and its configuration entry."""
    checked = _check_scopes(scopes, name)
    if not _NAME.fullmatch(name):
        raise ApiKeyError(
            f"invalid key name {name!r}: use 1 to 64 letters, digits, '_', '.' or '-'"
        )
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    return secret, ApiKey(name, checked, digest(secret))


def parse_api_keys(text: str | None) -> list[ApiKey]:
    """Parse the API_KEYS setting; raise ApiKeyError naming the first invalid entry."""
    keys: list[ApiKey] = []
    for position, raw in enumerate((text or "").split(";"), start=1):
        entry = raw.strip()
        if not entry:
            continue
        parts = entry.split(":")
        if len(parts) != 3:
            raise ApiKeyError(
                f"API_KEYS entry {position} has {len(parts)} parts, expected NAME:SCOPES:SHA256 "
                "(create one with `plan-keys create NAME --scopes generate`)"
            )
        name, scopes, key_digest = (part.strip() for part in parts)
        if not _NAME.fullmatch(name):
            raise ApiKeyError(f"API_KEYS entry {position}: invalid name {name!r}")
        if not _DIGEST.fullmatch(key_digest):
            raise ApiKeyError(
                f"API_KEYS entry {position} ({name}): the digest must be 64 lower-case hex "
                "characters, the SHA-256 of the key; never put the key itself here"
            )
        keys.append(ApiKey(name, _check_scopes(scopes.split(","), name), key_digest))
    names = [key.name for key in keys]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ApiKeyError(f"API_KEYS names must be unique: {', '.join(duplicates)} repeated")
    return keys


def find_key(keys: list[ApiKey], presented: str) -> ApiKey | None:
    """Return the configured key whose digest matches `presented`, or None.

    Every entry is compared, each in constant time, so the time taken does not
    depend on which entry matches or how much of a digest does.
    """
    presented_digest = digest(presented)
    found: ApiKey | None = None
    for key in keys:
        if hmac.compare_digest(key.digest, presented_digest):
            found = key
    return found


def _check_scopes(scopes: list[str], name: str) -> frozenset[str]:
    cleaned = frozenset(scope.strip() for scope in scopes if scope.strip())
    allowed = ", ".join(SCOPES)
    if not cleaned:
        raise ApiKeyError(f"key {name!r} has no scope: give one or more of {allowed}")
    unknown = sorted(cleaned - set(SCOPES))
    if unknown:
        raise ApiKeyError(f"key {name!r}: unknown scopes {unknown}; use one or more of {allowed}")
    return cleaned
