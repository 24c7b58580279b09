"""`plan-keys create NAME --scopes generate,metrics`: make an API key and its API_KEYS entry."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from app.core.api_keys import SCOPES, ApiKeyError, new_key


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of `plan-keys`."""
    parser = argparse.ArgumentParser(
        prog="plan-keys",
        description="Create API keys for the plan service. The service stores only digests.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser(
        "create",
        help="print a new key, then the entry to add to API_KEYS",
        description=(
            "Print a new random key on the first line (give it to the client; it is not "
            "shown again) and its API_KEYS entry on the second (add it to the service's "
            "settings, separated from other entries by ';')."
        ),
    )
    create.add_argument("name", help="a name for the key, shown in logs: letters, digits, _ . -")
    create.add_argument(
        "--scopes",
        default="generate",
        help=f"comma-separated scopes among {', '.join(SCOPES)} (default: generate)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run `plan-keys` and return the process exit status."""
    args = build_parser().parse_args(argv)
    try:
        secret, key = new_key(args.name, args.scopes.split(","))
    except ApiKeyError as error:
        print(f"plan-keys: error: {error}", file=sys.stderr)
        return 1
    print(secret)
    print(key.entry())
    return 0


if __name__ == "__main__":
    sys.exit(main())
