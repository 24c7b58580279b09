"""Errors of the model-artifact commands; each message is one line meant for the user."""

from __future__ import annotations


class ModelStoreError(Exception):
    """A pull or model creation that failed, with a message that names the fix."""


class ArtifactPullError(ModelStoreError):
    """An S3 artifact pull that failed."""


class ChecksumMismatchError(ArtifactPullError):
    """A downloaded artifact whose size or content digest differs from the expected one."""


class ModelfileError(ModelStoreError, ValueError):
    """A Modelfile that cannot be parsed; the message names the file and line."""


class ModelCreateError(ModelStoreError):
    """An Ollama model creation that failed."""
