"""Backend failures, translated from each vendor's exceptions into one hierarchy.

Each error carries two texts. `message` has the specifics an operator needs
(host, model id, region, the upstream reply, how to fix the configuration) and
belongs in the service log only. `public_message()` has what an API client may
see: which model failed and how, and nothing about the deployment.
"""

from __future__ import annotations

from typing import Literal

# The model a backend serves in the plan pipeline.
ModelRole = Literal["small", "large"]


class BackendError(Exception):
    """A model backend failed to produce a completion."""

    # The HTTP status the API returns when no other backend can replace this one.
    status_code = 502
    # The failure as a verb phrase for `public_message`. It names no host, URL, port,
    # model id, region or credential, because API clients see it.
    public_summary = "failed"

    def __init__(self, backend: str, message: str) -> None:
        super().__init__(f"{backend}: {message}")
        self.backend = backend
        self.message = message

    def public_message(self, role: ModelRole) -> str:
        """Return the sentence shown to API clients, such as `The small model timed out.`"""
        return f"The {role} model {self.public_summary}."


class BackendUnavailable(BackendError):
    """The backend cannot be reached or is not configured (connection refused, no credentials)."""

    status_code = 503
    public_summary = "could not be reached"


class BackendTimeout(BackendError):
    """The backend did not respond within the configured timeout."""

    status_code = 504
    public_summary = "timed out"


class BackendThrottled(BackendError):
    """The backend rejected the request for exceeding a rate or quota limit."""

    status_code = 503
    public_summary = "is throttled"


class BackendResponseError(BackendError):
    """The backend returned a server error or a response that cannot be used."""

    status_code = 502
    public_summary = "returned an error or an invalid response"


class PromptTooLongError(BackendResponseError):
    """The prompt and the requested output do not fit in the model's context window."""

    public_summary = "cannot fit the request in its context window"

    def __init__(self, backend: str, message: str, *, prompt_tokens: int, limit: int) -> None:
        super().__init__(backend, message)
        self.prompt_tokens = prompt_tokens
        self.limit = limit
