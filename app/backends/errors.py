"""Backend failures, translated from each vendor's exceptions into one hierarchy."""

from __future__ import annotations


class BackendError(Exception):
    """A model backend failed to produce a completion."""

    # The HTTP status the API returns when no other backend can replace this one.
    status_code = 502

    def __init__(self, backend: str, message: str) -> None:
        super().__init__(f"{backend}: {message}")
        self.backend = backend
        self.message = message


class BackendUnavailable(BackendError):
    """The backend cannot be reached or is not configured (connection refused, no credentials)."""

    status_code = 503


class BackendTimeout(BackendError):
    """The backend did not respond within the configured timeout."""

    status_code = 504


class BackendThrottled(BackendError):
    """The backend rejected the request for exceeding a rate or quota limit."""

    status_code = 503


class BackendResponseError(BackendError):
    """The backend returned a server error or a response that cannot be used."""

    status_code = 502


class PromptTooLongError(BackendResponseError):
    """The prompt and the requested output do not fit in the model's context window."""

    def __init__(self, backend: str, message: str, *, prompt_tokens: int, limit: int) -> None:
        super().__init__(backend, message)
        self.prompt_tokens = prompt_tokens
        self.limit = limit
