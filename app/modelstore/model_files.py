"""Local files that a Modelfile's FROM and ADAPTER name: path resolution and the GGUF check.

`plan-model create` uploads one file per FROM or ADAPTER, so it accepts GGUF
files only. A safetensors folder, which `ollama create` converts itself, is
rejected with an error that names this limit.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from app.modelstore.errors import ModelCreateError
from app.modelstore.modelfile import Modelfile

# Every GGUF file starts with these 4 bytes (the format's magic number).
GGUF_MAGIC = b"GGUF"
_MODEL_FILE_SUFFIXES = (".gguf", ".safetensors", ".bin")


@dataclass(frozen=True)
class LocalModelFiles:
    """The checked GGUF files of a Modelfile: its FROM weights, if local, and its adapters."""

    weights: Path | None
    adapters: tuple[Path, ...] = ()


def find_model_files(modelfile: Modelfile, modelfile_path: Path) -> LocalModelFiles:
    """Resolve FROM and ADAPTER to local files and check that each one is a GGUF file.

    Raises ModelCreateError for a path that does not exist, a folder, an ADAPTER
    that names no file, or a file without the GGUF magic.
    """
    base_dir = modelfile_path.parent
    from_where = f"FROM on line {modelfile.from_line}"
    weights = _local_file(modelfile.from_, base_dir, from_where, "FROM")
    if weights is not None:
        check_gguf(weights, from_where, "FROM")

    adapters: list[Path] = []
    for adapter in modelfile.adapters:
        path = _local_file(adapter, base_dir, "ADAPTER", "ADAPTER")
        if path is None:
            raise ModelCreateError(f"ADAPTER {adapter!r} in {modelfile_path} is not a file")
        check_gguf(path, "ADAPTER", "ADAPTER")
        adapters.append(path)
    return LocalModelFiles(weights=weights, adapters=tuple(adapters))


def check_gguf(path: Path, where: str, instruction: str) -> None:
    """Raise ModelCreateError unless the file at `path` starts with the GGUF magic."""
    try:
        with path.open("rb") as stream:
            head = stream.read(len(GGUF_MAGIC))
    except OSError as error:
        raise ModelCreateError(f"cannot read {path}: {error.strerror or error}") from None
    if head == GGUF_MAGIC:
        return

    found = "it is empty" if not head else f"it starts with {head!r}"
    raise ModelCreateError(
        f"{where} names {path}, which is not a GGUF file ({found}, not {GGUF_MAGIC!r}). "
        f"Only GGUF files are supported by this command, so point {instruction} at a .gguf file."
    )


def _local_file(reference: str, base_dir: Path, where: str, instruction: str) -> Path | None:
    """Resolve a FROM or ADAPTER value to a file, or None when it names a model instead.

    Like Ollama, a relative path is relative to the Modelfile's folder. A value that
    looks like a path (./, ../, /, ~ or a model-file suffix) but does not exist is an error.
    """
    expanded = Path(reference).expanduser()
    candidate = expanded if expanded.is_absolute() else base_dir / expanded
    looks_like_path = reference.startswith(("/", "./", "../", "~")) or reference.endswith(
        _MODEL_FILE_SUFFIXES
    )
    if candidate.is_dir():
        raise ModelCreateError(
            f"{where} names the folder {candidate}, but only GGUF files are supported by this "
            f"command (safetensors folders are not): point {instruction} at a .gguf file"
        )
    if candidate.is_file():
        return candidate
    if looks_like_path:
        raise ModelCreateError(
            f"{where} names {reference!r}, but {candidate} does not exist: "
            "run `plan-model pull` first or fix the path"
        )
    return None
