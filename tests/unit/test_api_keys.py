"""API keys: creation, the API_KEYS setting, and lookup."""

from __future__ import annotations

import re

import pytest
from pydantic import ValidationError

from app.cli import keys as keys_cli
from app.core.api_keys import ApiKeyError, digest, find_key, new_key, parse_api_keys
from app.core.config import Settings


def test_new_key_entry_parses_back():
    secret, key = new_key("ci", ["metrics", "generate"])

    parsed = parse_api_keys(key.entry())

    assert parsed == [key]
    assert key.digest == digest(secret)
    assert secret not in key.entry()


def test_new_keys_differ():
    assert new_key("a", ["generate"])[0] != new_key("a", ["generate"])[0]


def test_find_key_matches_only_its_secret():
    secret, key = new_key("ci", ["generate"])
    other_secret, other = new_key("ops", ["metrics"])

    assert find_key([key, other], secret) == key
    assert find_key([key, other], other_secret) == other
    assert find_key([key, other], secret + "x") is None


def test_parse_skips_empty_entries():
    _, key = new_key("ci", ["generate"])

    assert parse_api_keys(f" ; {key.entry()} ;") == [key]
    assert parse_api_keys(None) == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ci:generate", "expected NAME:SCOPES:SHA256"),
        ("ci:generate:psk_plainsecret", "never put the key itself here"),
        (f"ci:admin:{'a' * 64}", "unknown scopes ['admin']"),
        (f"ci::{'a' * 64}", "has no scope"),
        (f"bad name:generate:{'a' * 64}", "invalid name"),
        (f"ci:generate:{'a' * 64};ci:metrics:{'b' * 64}", "ci repeated"),
    ],
)
def test_parse_rejects_invalid_entries(text, message):
    with pytest.raises(ApiKeyError, match=re.escape(message)):
        parse_api_keys(text)


def test_invalid_setting_fails_validation():
    with pytest.raises(ValidationError, match="API_KEYS entry 1"):
        Settings(_env_file=None, api_keys="nonsense")


def test_cli_prints_key_then_entry(capsys):
    assert keys_cli.main(["create", "ci", "--scopes", "generate,metrics"]) == 0

    secret, entry = capsys.readouterr().out.splitlines()
    assert secret.startswith("psk_")
    assert entry == f"ci:generate,metrics:{digest(secret)}"


def test_cli_rejects_unknown_scope(capsys):
    assert keys_cli.main(["create", "ci", "--scopes", "root"]) == 1
    assert "unknown scopes" in capsys.readouterr().err
