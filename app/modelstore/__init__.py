"""Model artifacts: pull them from S3, parse the Modelfile and create the Ollama model."""

from app.modelstore.checksums import VerifiedBy
from app.modelstore.errors import (
    ArtifactPullError,
    ChecksumMismatchError,
    ModelCreateError,
    ModelfileError,
    ModelStoreError,
)
from app.modelstore.modelfile import Modelfile, parse_modelfile, read_modelfile
from app.modelstore.ollama_create import CreateResult, create_model, resolve_host
from app.modelstore.s3_pull import (
    DEFAULT_DESTINATION,
    PulledFile,
    PullSummary,
    make_s3_client,
    pull_artifacts,
)

__all__ = [
    "DEFAULT_DESTINATION",
    "ArtifactPullError",
    "ChecksumMismatchError",
    "CreateResult",
    "ModelCreateError",
    "ModelStoreError",
    "Modelfile",
    "ModelfileError",
    "PullSummary",
    "PulledFile",
    "VerifiedBy",
    "create_model",
    "make_s3_client",
    "parse_modelfile",
    "pull_artifacts",
    "read_modelfile",
    "resolve_host",
]
