"""Partial downloads: `NAME.part` plus a sidecar naming the object version it holds.

The sidecar `NAME.part.etag` is a small JSON object {"etag": ..., "size": ...},
written before the first byte of the part. A later pull resumes the part only
while the object still has that ETag and size. Otherwise it starts from zero, so
that bytes of two object versions never end up in one file.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

PART_SUFFIX = ".part"
MARKER_SUFFIX = ".part.etag"


@dataclass(frozen=True)
class PartialDownload:
    """The in-progress download of the artifact that will be stored at `target`."""

    target: Path

    @property
    def part(self) -> Path:
        return self.target.with_name(self.target.name + PART_SUFFIX)

    @property
    def marker(self) -> Path:
        return self.target.with_name(self.target.name + MARKER_SUFFIX)

    def resumable_bytes(self, etag: str, size: int) -> int | None:
        """Return the part's length when it contains a prefix of the object version `etag`.

        Returns None when there is no part, no readable sidecar, the sidecar names
        another ETag or size, or the part is longer than the object.
        """
        try:
            recorded = json.loads(self.marker.read_text(encoding="utf-8"))
            length = self.part.stat().st_size
        except (OSError, ValueError):
            return None
        if not isinstance(recorded, dict):
            return None
        if recorded.get("etag") != etag or recorded.get("size") != size or length > size:
            return None
        return length

    def start(self, etag: str, size: int) -> None:
        """Empty the part and record that it is about to hold object version `etag`."""
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.part.write_bytes(b"")
        self.marker.write_text(json.dumps({"etag": etag, "size": size}), encoding="utf-8")

    def discard(self) -> None:
        """Delete the part and its sidecar."""
        for path in (self.part, self.marker):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def finish(self) -> None:
        """Move the verified part to `target`, replacing any older file, and drop the sidecar."""
        os.replace(self.part, self.target)
        with contextlib.suppress(FileNotFoundError):
            self.marker.unlink()
