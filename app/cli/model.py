"""`plan-model`: pull the model artifacts from S3 and create the Ollama model.

    plan-model pull --bucket BUCKET [--prefix PREFIX] [--dest model/artifacts]
    plan-model create [--modelfile model/Modelfile] [--name NAME] [--host URL]

Every failure is one line on stderr and exit status 1; usage errors exit with 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from app.core.config import Settings
from app.modelstore import (
    DEFAULT_DESTINATION,
    ModelStoreError,
    PullSummary,
    create_model,
    pull_artifacts,
)

PROG = "plan-model"
DEFAULT_MODELFILE = Path("model/Modelfile")


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of `plan-model` and its two commands."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Pull the fine-tuned model's artifacts from S3 and create the Ollama model.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    pull = commands.add_parser(
        "pull",
        help="download and verify every object under an S3 prefix",
        description=(
            "Download every object under s3://BUCKET/PREFIX/ into --dest, resuming partial "
            "downloads and verifying each file against SHA256SUMS, the object's SHA-256 "
            "checksum or its ETag. Files already present and verified are skipped."
        ),
    )
    pull.add_argument("--bucket", help="S3 bucket of the artifacts (default: $MODEL_BUCKET)")
    pull.add_argument(
        "--prefix",
        help="folder inside the bucket, e.g. plan-llama/v3 (default: $MODEL_PREFIX, else the root)",
    )
    pull.add_argument(
        "--dest",
        type=Path,
        default=DEFAULT_DESTINATION,
        metavar="DIR",
        help=f"folder to download into (default: {DEFAULT_DESTINATION})",
    )
    pull.add_argument(
        "--endpoint-url",
        help="S3-compatible endpoint such as MinIO (default: $AWS_ENDPOINT_URL, else AWS)",
    )
    pull.add_argument("--region", help="AWS region of the bucket (default: boto3's own setting)")
    pull.add_argument(
        "--quiet", action="store_true", help="print no progress bars and no summary line"
    )

    create = commands.add_parser(
        "create",
        help="create the Ollama model from a Modelfile",
        description=(
            "Upload the Modelfile's local GGUF file to Ollama as a blob (unless the server "
            "already holds it) and create the model with its template and parameters. Only "
            "GGUF files are supported, not safetensors folders."
        ),
    )
    create.add_argument(
        "--modelfile",
        type=Path,
        default=DEFAULT_MODELFILE,
        help=f"Modelfile to create the model from (default: {DEFAULT_MODELFILE})",
    )
    create.add_argument("--name", help="model name to create (default: $LOCAL_MODEL_NAME)")
    create.add_argument(
        "--host", help="Ollama server URL (default: $OLLAMA_HOST, else 127.0.0.1:11434)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run `plan-model` and return the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "pull":
        return _pull(parser, args)
    return _create(args)


def _pull(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    bucket = args.bucket or os.environ.get("MODEL_BUCKET")
    if not bucket:
        parser.error("pull needs a bucket: pass --bucket or set MODEL_BUCKET")
    prefix = args.prefix if args.prefix is not None else os.environ.get("MODEL_PREFIX", "")

    try:
        summary = pull_artifacts(
            bucket,
            prefix,
            args.dest,
            endpoint_url=args.endpoint_url,
            region=args.region,
            progress=not args.quiet,
        )
    except ModelStoreError as error:
        return _fail(str(error))

    for item in summary.size_only:
        print(
            f"{PROG}: warning: {item.name} was checked by size only ({item.unverified_reason})",
            file=sys.stderr,
        )
    if not args.quiet:
        print(_summary_line(summary, bucket, prefix), file=sys.stderr)
    return 0


def _create(args: argparse.Namespace) -> int:
    try:
        settings = Settings()
    except ValidationError as error:
        return _fail(f"invalid settings: {error}")
    name = args.name or settings.local_model_name
    host = args.host or settings.ollama_host

    try:
        result = create_model(args.modelfile, name, host)
    except ModelStoreError as error:
        return _fail(str(error))
    print(f"{PROG}: created model {result.model} on {result.host}")
    return 0


def _summary_line(summary: PullSummary, bucket: str, prefix: str) -> str:
    location = f"s3://{bucket}/{prefix.strip('/')}".rstrip("/")
    count = len(summary.files)
    return (
        f"{PROG}: pulled {count} {'file' if count == 1 else 'files'} from {location} into "
        f"{summary.destination}: {len(summary.downloaded)} downloaded, "
        f"{len(summary.skipped)} skipped, {_format_bytes(summary.bytes_transferred)} transferred"
    )


def _format_bytes(count: int) -> str:
    if count < 1024:
        return f"{count} B"
    value = count / 1024
    for unit in ("KiB", "MiB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def _fail(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
