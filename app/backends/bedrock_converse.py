"""Bedrock Converse wire mapping: prompts to requests, responses to completions, errors to ours.

Pure functions with no client or network use, so the backend module keeps only
the call itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    CredentialRetrievalError,
    HTTPClientError,
    InvalidConfigError,
    NoAuthTokenError,
    NoCredentialsError,
    PartialCredentialsError,
    ProfileNotFound,
    ReadTimeoutError,
    SSOError,
    TokenRetrievalError,
)
from botocore.exceptions import ConnectionError as BotocoreConnectionError

from app.backends.base import ChatMessage, Completion
from app.backends.errors import (
    BackendError,
    BackendResponseError,
    BackendThrottled,
    BackendTimeout,
    BackendUnavailable,
)

BACKEND_NAME = "bedrock"

_THROTTLING_CODES = frozenset(
    {"ThrottlingException", "ServiceQuotaExceededException", "TooManyRequestsException"}
)
_CREDENTIALS_REJECTED_CODES = frozenset(
    {
        "UnrecognizedClientException",
        "InvalidSignatureException",
        "IncompleteSignatureException",
        "ExpiredTokenException",
        "InvalidClientTokenId",
        "MissingAuthenticationTokenException",
    }
)
_NOT_SERVING_CODES = frozenset({"ServiceUnavailableException", "ModelNotReadyException"})
_CREDENTIAL_LOAD_ERRORS = (
    CredentialRetrievalError,
    TokenRetrievalError,
    SSOError,
    NoAuthTokenError,
    ProfileNotFound,
    InvalidConfigError,
)

CREDENTIALS_FIX = (
    "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, set AWS_PROFILE to a configured profile "
    "(run `aws sso login` first for an SSO profile), or run with an IAM role"
)


def to_converse_messages(
    messages: Sequence[ChatMessage],
) -> tuple[list[dict[str, str]], list[dict[str, Any]]]:
    """Split a chat prompt into Converse `system` blocks and a Converse conversation.

    Converse requires the conversation to start with a user message and to alternate
    roles, so consecutive messages of one role become one message with a text block
    each. Blank messages are dropped because Converse rejects blank text. Raises
    ValueError when the first non-system message is not from the user.
    """
    system: list[dict[str, str]] = []
    conversation: list[dict[str, Any]] = []

    for message in messages:
        if not message.content.strip():
            continue
        block = {"text": message.content}
        if message.role == "system":
            system.append(block)
        elif conversation and conversation[-1]["role"] == message.role:
            conversation[-1]["content"].append(block)
        else:
            conversation.append({"role": message.role, "content": [block]})

    if not conversation:
        raise ValueError("the prompt has no non-blank user message, which Converse requires")
    if conversation[0]["role"] != "user":
        raise ValueError(
            "the first non-system message of the prompt is from the assistant, "
            "but Converse requires a conversation to start with a user message"
        )
    return system, conversation


def completion_from_response(response: Mapping[str, Any], model_id: str) -> Completion:
    """Build a Completion from a Converse response, joining the text blocks of its message."""
    output = response.get("output")
    message = output.get("message") if isinstance(output, Mapping) else None
    content = message.get("content") if isinstance(message, Mapping) else None
    stop_reason = response.get("stopReason")
    if not isinstance(content, list):
        raise BackendResponseError(
            BACKEND_NAME,
            f"the Converse response for model {model_id} contains no output message",
        )

    texts = [
        block["text"]
        for block in content
        if isinstance(block, Mapping) and isinstance(block.get("text"), str)
    ]
    text = "".join(texts)
    if not text:
        raise BackendResponseError(
            BACKEND_NAME,
            f"model {model_id} returned no text (stopReason={stop_reason})",
        )

    usage = response.get("usage")
    if not isinstance(usage, Mapping):
        usage = {}
    return Completion(
        text=text,
        input_tokens=_int_or_none(usage.get("inputTokens")),
        output_tokens=_int_or_none(usage.get("outputTokens")),
        stop_reason=stop_reason if isinstance(stop_reason, str) else None,
    )


def translate_error(error: BaseException, *, model_id: str, region: str) -> BackendError:
    """Map a boto3 or botocore exception to the BackendError that describes it."""
    where = f"model {model_id} in region {region}"

    if isinstance(error, ClientError):
        return _translate_client_error(error, model_id=model_id, region=region)
    if isinstance(error, NoCredentialsError | PartialCredentialsError):
        return BackendUnavailable(
            BACKEND_NAME, f"no AWS credentials found for {where} ({error}): {CREDENTIALS_FIX}"
        )
    if isinstance(error, _CREDENTIAL_LOAD_ERRORS):
        return BackendUnavailable(
            BACKEND_NAME,
            f"loading AWS credentials for {where} failed "
            f"({type(error).__name__}: {error}): {CREDENTIALS_FIX}",
        )
    # ConnectTimeoutError is a ConnectionError, so the timeouts come first.
    if isinstance(error, ReadTimeoutError | ConnectTimeoutError):
        return BackendTimeout(BACKEND_NAME, f"the Converse call for {where} timed out: {error}")
    if isinstance(error, BotocoreConnectionError | HTTPClientError):
        return BackendUnavailable(
            BACKEND_NAME, f"connecting to Bedrock for {where} failed: {error}"
        )
    if isinstance(error, BotoCoreError):
        return BackendResponseError(
            BACKEND_NAME,
            f"the Converse call for {where} failed ({type(error).__name__}): {error}",
        )
    return BackendResponseError(
        BACKEND_NAME,
        f"the Converse call for {where} failed with an unexpected {type(error).__name__}: {error}",
    )


def _translate_client_error(error: ClientError, *, model_id: str, region: str) -> BackendError:
    details = error.response.get("Error", {})
    code = details.get("Code") or "UnknownError"
    message = details.get("Message") or "(no message)"
    status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    summary = f"{code} (HTTP {status}) for model {model_id} in region {region}: {message}"

    if code in _THROTTLING_CODES:
        return BackendThrottled(BACKEND_NAME, f"Bedrock throttled the request, {summary}")
    if code == "ModelTimeoutException":
        return BackendTimeout(BACKEND_NAME, f"the model timed out, {summary}")
    if code == "AccessDeniedException":
        return BackendUnavailable(
            BACKEND_NAME,
            f"access denied, {summary}. Request access to the model in the Bedrock console "
            f"for region {region} and allow bedrock:InvokeModel for the caller's IAM identity",
        )
    if code == "ResourceNotFoundException":
        return BackendUnavailable(
            BACKEND_NAME,
            f"model not found, {summary}. Check BEDROCK_MODEL_ID and BEDROCK_REGION: "
            "some models are served only through an inference profile id such as us.<model id>",
        )
    if code in _CREDENTIALS_REJECTED_CODES:
        return BackendUnavailable(
            BACKEND_NAME,
            f"AWS rejected the request credentials, {summary}. Check that the access key, "
            "secret key and session token belong together and have not expired",
        )
    if code in _NOT_SERVING_CODES:
        return BackendUnavailable(BACKEND_NAME, f"Bedrock cannot serve the model now, {summary}")
    return BackendResponseError(BACKEND_NAME, f"Bedrock rejected the Converse call, {summary}")


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
