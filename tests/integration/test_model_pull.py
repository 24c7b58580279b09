"""pull_artifacts and `plan-model pull` against moto's S3 server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import random
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from moto.server import ThreadedMotoServer

from app.cli.model import main
from app.modelstore import (
    ArtifactPullError,
    ChecksumMismatchError,
    VerifiedBy,
    make_s3_client,
    pull_artifacts,
)
from app.modelstore.bucket_names import check_bucket_name
from app.modelstore.partial import PartialDownload
from app.modelstore.s3_errors import S3Location, pull_error
from tests.conftest import REPO_ROOT

PREFIX = "plan-llama/v1"
MULTIPART_PART_BYTES = 5 * 1024 * 1024  # moto's (and S3's) minimum for all parts but the last


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "absent-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "absent-aws-credentials"))
    monkeypatch.delenv("MODEL_BUCKET", raising=False)
    monkeypatch.delenv("MODEL_PREFIX", raising=False)


@pytest.fixture
def s3(moto_url: str) -> Any:
    return boto3.client("s3", endpoint_url=moto_url)


@pytest.fixture
def bucket(s3: Any) -> str:
    name = f"models-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    return tmp_path / "artifacts"


def payload(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def gguf_payload(size: int, seed: int) -> bytes:
    return b"GGUF" + payload(size - 4, seed)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def manifest_text(files: dict[str, bytes]) -> bytes:
    return "".join(f"{sha256_hex(data)}  {name}\n" for name, data in files.items()).encode()


def put(s3: Any, bucket: str, name: str, data: bytes, **extra: Any) -> str:
    response = s3.put_object(Bucket=bucket, Key=f"{PREFIX}/{name}", Body=data, **extra)
    return response["ETag"]


def put_multipart(s3: Any, bucket: str, name: str, data: bytes) -> str:
    key = f"{PREFIX}/{name}"
    upload = s3.create_multipart_upload(Bucket=bucket, Key=key, ChecksumAlgorithm="SHA256")
    parts = []
    for number, start in enumerate(range(0, len(data), MULTIPART_PART_BYTES), start=1):
        part = s3.upload_part(
            Bucket=bucket,
            Key=key,
            UploadId=upload["UploadId"],
            PartNumber=number,
            Body=data[start : start + MULTIPART_PART_BYTES],
            ChecksumAlgorithm="SHA256",
        )
        parts.append(
            {"PartNumber": number, "ETag": part["ETag"], "ChecksumSHA256": part["ChecksumSHA256"]}
        )
    completed = s3.complete_multipart_upload(
        Bucket=bucket, Key=key, UploadId=upload["UploadId"], MultipartUpload={"Parts": parts}
    )
    return completed["ETag"]


def etag_of(s3: Any, bucket: str, name: str) -> str:
    return s3.head_object(Bucket=bucket, Key=f"{PREFIX}/{name}")["ETag"]


def count_get_object_calls(client: Any) -> list[str]:
    keys: list[str] = []
    client.meta.events.register(
        "before-call.s3.GetObject", lambda params, **_: keys.append(params["url_path"])
    )
    return keys


@pytest.fixture
def model_data() -> bytes:
    return gguf_payload(300_000, seed=1)


@pytest.fixture
def single_model_bucket(s3: Any, bucket: str, model_data: bytes) -> str:
    """A bucket whose prefix contains model.gguf and a SHA256SUMS entry for it."""
    put(s3, bucket, "model.gguf", model_data)
    put(s3, bucket, "SHA256SUMS", manifest_text({"model.gguf": model_data}))
    return bucket


def run_cli(*argv: str) -> int:
    return main(["pull", *argv])


# Full pulls


def test_pull_verifies_each_file(s3: Any, bucket: str, dest: Path, moto_url: str) -> None:
    files = {
        "model.gguf": gguf_payload(300_000, seed=1),
        "weights.bin": payload(MULTIPART_PART_BYTES + 65_536, seed=2),
        "config.json": payload(20_000, seed=3),
        "tokenizer/vocab.json": payload(50_000, seed=4),
    }
    manifest = manifest_text({name: files[name] for name in ("model.gguf", "weights.bin")})
    put(s3, bucket, "SHA256SUMS", manifest)
    put(s3, bucket, "model.gguf", files["model.gguf"])
    put_multipart(s3, bucket, "weights.bin", files["weights.bin"])
    put(s3, bucket, "config.json", files["config.json"], ChecksumAlgorithm="SHA256")
    put(s3, bucket, "tokenizer/vocab.json", files["tokenizer/vocab.json"])

    summary = pull_artifacts(bucket, PREFIX, dest, endpoint_url=moto_url, progress=False)

    for name, data in files.items():
        assert (dest / name).read_bytes() == data, name
    assert (dest / "SHA256SUMS").read_bytes() == manifest
    assert summary.by_name("model.gguf").verified_by is VerifiedBy.MANIFEST
    assert summary.by_name("weights.bin").verified_by is VerifiedBy.MANIFEST
    assert summary.by_name("config.json").verified_by is VerifiedBy.CHECKSUM_SHA256
    assert summary.by_name("tokenizer/vocab.json").verified_by is VerifiedBy.ETAG_MD5
    assert sorted(summary.downloaded) == sorted([*files, "SHA256SUMS"])
    assert summary.skipped == []
    assert summary.bytes_transferred == sum(map(len, files.values())) + len(manifest)
    assert list(dest.rglob("*.part*")) == []


def test_second_pull_skips_everything(
    s3: Any, single_model_bucket: str, dest: Path, moto_url: str
) -> None:
    put(s3, single_model_bucket, "config.json", b'{"layers": 32}', ChecksumAlgorithm="SHA256")
    pull_artifacts(single_model_bucket, PREFIX, dest, endpoint_url=moto_url, progress=False)
    modified = (dest / "model.gguf").stat().st_mtime_ns
    client = make_s3_client(endpoint_url=moto_url)
    get_calls = count_get_object_calls(client)

    summary = pull_artifacts(single_model_bucket, PREFIX, dest, client=client, progress=False)

    assert sorted(summary.skipped) == ["SHA256SUMS", "config.json", "model.gguf"]
    assert summary.downloaded == []
    assert summary.bytes_transferred == 0
    assert get_calls == []
    assert (dest / "model.gguf").stat().st_mtime_ns == modified


def test_changed_local_file_is_replaced(
    single_model_bucket: str, dest: Path, moto_url: str, model_data: bytes
) -> None:
    dest.mkdir()
    (dest / "model.gguf").write_bytes(b"x" * len(model_data))

    summary = pull_artifacts(
        single_model_bucket, PREFIX, dest, endpoint_url=moto_url, progress=False
    )

    assert summary.by_name("model.gguf").action == "downloaded"
    assert (dest / "model.gguf").read_bytes() == model_data


def test_prefix_with_slash_is_same_folder(
    single_model_bucket: str, dest: Path, moto_url: str
) -> None:
    summary = pull_artifacts(
        single_model_bucket, f"/{PREFIX}/", dest, endpoint_url=moto_url, progress=False
    )

    assert sorted(item.name for item in summary.files) == ["SHA256SUMS", "model.gguf"]


# Resuming


def test_pull_resumes_partial_download(
    s3: Any, single_model_bucket: str, dest: Path, moto_url: str, model_data: bytes
) -> None:
    half = len(model_data) // 2
    partial = PartialDownload(dest / "model.gguf")
    partial.start(etag_of(s3, single_model_bucket, "model.gguf"), len(model_data))
    partial.part.write_bytes(model_data[:half])
    (dest / "SHA256SUMS").write_bytes(manifest_text({"model.gguf": model_data}))

    summary = pull_artifacts(
        single_model_bucket, PREFIX, dest, endpoint_url=moto_url, progress=False
    )

    assert summary.by_name("model.gguf").bytes_transferred == len(model_data) - half
    assert summary.bytes_transferred == len(model_data) - half
    assert (dest / "model.gguf").read_bytes() == model_data
    assert not partial.part.exists()
    assert not partial.marker.exists()


def test_part_of_other_version_restarts(
    single_model_bucket: str, dest: Path, moto_url: str, model_data: bytes
) -> None:
    partial = PartialDownload(dest / "model.gguf")
    partial.start('"0123456789abcdef0123456789abcdef"', len(model_data))
    partial.part.write_bytes(b"old version bytes")

    summary = pull_artifacts(
        single_model_bucket, PREFIX, dest, endpoint_url=moto_url, progress=False
    )

    assert summary.by_name("model.gguf").bytes_transferred == len(model_data)
    assert (dest / "model.gguf").read_bytes() == model_data


def test_complete_part_is_only_verified(
    s3: Any, single_model_bucket: str, dest: Path, moto_url: str, model_data: bytes
) -> None:
    partial = PartialDownload(dest / "model.gguf")
    partial.start(etag_of(s3, single_model_bucket, "model.gguf"), len(model_data))
    partial.part.write_bytes(model_data)

    summary = pull_artifacts(
        single_model_bucket, PREFIX, dest, endpoint_url=moto_url, progress=False
    )

    assert summary.by_name("model.gguf").action == "downloaded"
    assert summary.by_name("model.gguf").bytes_transferred == 0
    assert (dest / "model.gguf").read_bytes() == model_data


def test_corrupted_part_is_downloaded_again(
    s3: Any, single_model_bucket: str, dest: Path, moto_url: str, model_data: bytes
) -> None:
    half = len(model_data) // 2
    corrupted = bytes(byte ^ 0xFF for byte in model_data[:half])
    partial = PartialDownload(dest / "model.gguf")
    partial.start(etag_of(s3, single_model_bucket, "model.gguf"), len(model_data))
    partial.part.write_bytes(corrupted)

    summary = pull_artifacts(
        single_model_bucket, PREFIX, dest, endpoint_url=moto_url, progress=False
    )

    assert (dest / "model.gguf").read_bytes() == model_data
    assert summary.by_name("model.gguf").bytes_transferred == (len(model_data) - half) + len(
        model_data
    )
    assert not partial.part.exists()


def test_corrupted_part_fixed_by_etag(
    s3: Any, bucket: str, dest: Path, moto_url: str, model_data: bytes
) -> None:
    etag = put(s3, bucket, "model.gguf", model_data)
    partial = PartialDownload(dest / "model.gguf")
    partial.start(etag, len(model_data))
    partial.part.write_bytes(b"\0" * 1000)

    summary = pull_artifacts(bucket, PREFIX, dest, endpoint_url=moto_url, progress=False)

    assert summary.by_name("model.gguf").verified_by is VerifiedBy.ETAG_MD5
    assert (dest / "model.gguf").read_bytes() == model_data


def test_cli_reports_resume(
    s3: Any,
    single_model_bucket: str,
    dest: Path,
    moto_url: str,
    model_data: bytes,
    capsys: pytest.CaptureFixture[str],
) -> None:
    half = len(model_data) // 2
    partial = PartialDownload(dest / "model.gguf")
    partial.start(etag_of(s3, single_model_bucket, "model.gguf"), len(model_data))
    partial.part.write_bytes(model_data[:half])

    status = run_cli("--bucket", single_model_bucket, "--prefix", PREFIX, "--dest", str(dest),
                     "--endpoint-url", moto_url)  # fmt: skip

    stderr = capsys.readouterr().err
    assert status == 0
    assert f"resumed model.gguf at {half} bytes" in stderr
    assert "resumed SHA256SUMS" not in stderr


def test_empty_object_is_not_resumed(
    s3: Any, bucket: str, dest: Path, moto_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    put(s3, bucket, "empty.txt", b"")

    status = run_cli("--bucket", bucket, "--prefix", PREFIX, "--dest", str(dest),
                     "--endpoint-url", moto_url)  # fmt: skip

    assert status == 0
    assert "resumed" not in capsys.readouterr().err
    assert (dest / "empty.txt").read_bytes() == b""


def test_failed_resume_printed_once(
    s3: Any, single_model_bucket: str, dest: Path, moto_url: str, model_data: bytes
) -> None:
    half = len(model_data) // 2
    partial = PartialDownload(dest / "model.gguf")
    partial.start(etag_of(s3, single_model_bucket, "model.gguf"), len(model_data))
    partial.part.write_bytes(bytes(half))

    # A child process, because pytest's log capture hides what logging's last-resort
    # handler would print to stderr of the real command.
    completed = subprocess.run(
        [sys.executable, "-m", "app.cli.model", "pull", "--bucket", single_model_bucket,
         "--prefix", PREFIX, "--dest", str(dest), "--endpoint-url", moto_url],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip

    assert completed.returncode == 0, completed.stderr
    assert completed.stderr.count("failed verification") == 1
    assert "resumed model.gguf failed verification" in completed.stderr
    assert (dest / "model.gguf").read_bytes() == model_data


# Verification failures and weaker evidence


def test_wrong_manifest_is_error(s3: Any, bucket: str, dest: Path, moto_url: str) -> None:
    data = gguf_payload(200_000, seed=5)
    put(s3, bucket, "model.gguf", data)
    put(s3, bucket, "SHA256SUMS", manifest_text({"model.gguf": b"other content"}))

    with pytest.raises(ChecksumMismatchError) as caught:
        pull_artifacts(bucket, PREFIX, dest, endpoint_url=moto_url, progress=False)

    message = str(caught.value)
    assert "checksum mismatch for model.gguf" in message
    assert sha256_hex(b"other content") in message
    assert sha256_hex(data) in message
    assert not (dest / "model.gguf").exists()
    assert list(dest.glob("model.gguf.part*")) == []


def test_wrong_manifest_fails_cli(
    s3: Any, bucket: str, dest: Path, moto_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    data = gguf_payload(200_000, seed=6)
    put(s3, bucket, "model.gguf", data)
    put(s3, bucket, "SHA256SUMS", manifest_text({"model.gguf": b"other content"}))

    status = run_cli("--bucket", bucket, "--prefix", PREFIX, "--dest", str(dest),
                     "--endpoint-url", moto_url, "--quiet")  # fmt: skip

    stderr = capsys.readouterr().err
    assert status == 1
    assert stderr.startswith("plan-model: error: checksum mismatch for model.gguf")
    assert sha256_hex(data) in stderr
    assert "Traceback" not in stderr


def test_manifest_naming_absent_file_is_error(
    s3: Any, bucket: str, dest: Path, moto_url: str
) -> None:
    put(s3, bucket, "model.gguf", b"weights")
    put(s3, bucket, "SHA256SUMS", manifest_text({"model.gguf": b"weights", "lora.gguf": b"x"}))

    with pytest.raises(ArtifactPullError, match="SHA256SUMS lists lora.gguf, which"):
        pull_artifacts(bucket, PREFIX, dest, endpoint_url=moto_url, progress=False)


def test_multipart_without_manifest_warns(
    s3: Any, bucket: str, dest: Path, moto_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    data = payload(MULTIPART_PART_BYTES + 1000, seed=7)
    put_multipart(s3, bucket, "weights.bin", data)

    status = run_cli("--bucket", bucket, "--prefix", PREFIX, "--dest", str(dest),
                     "--endpoint-url", moto_url, "--quiet")  # fmt: skip

    stderr = capsys.readouterr().err
    assert status == 0
    assert "plan-model: warning: weights.bin was checked by size only" in stderr
    assert "multipart ETag" in stderr
    assert (dest / "weights.bin").read_bytes() == data


# Command line: progress, environment and one-line errors


def test_cli_shows_progress_and_summary(
    single_model_bucket: str, dest: Path, moto_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status = run_cli("--bucket", single_model_bucket, "--prefix", PREFIX, "--dest", str(dest),
                     "--endpoint-url", moto_url)  # fmt: skip

    stderr = capsys.readouterr().err
    assert status == 0
    assert "model.gguf: 100%" in stderr
    assert "2 files from s3://" in stderr
    assert "2 downloaded, 0 skipped" in stderr


def test_cli_summary_singular(
    s3: Any, bucket: str, dest: Path, moto_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    put(s3, bucket, "model.gguf", gguf_payload(1000, seed=8))

    status = run_cli("--bucket", bucket, "--prefix", PREFIX, "--dest", str(dest),
                     "--endpoint-url", moto_url)  # fmt: skip

    stderr = capsys.readouterr().err
    assert status == 0
    assert "plan-model: pulled 1 file from s3://" in stderr
    assert "1 files" not in stderr


def test_cli_quiet_prints_nothing(
    single_model_bucket: str, dest: Path, moto_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status = run_cli("--bucket", single_model_bucket, "--prefix", PREFIX, "--dest", str(dest),
                     "--endpoint-url", moto_url, "--quiet")  # fmt: skip

    captured = capsys.readouterr()
    assert status == 0
    assert captured.err == ""
    assert captured.out == ""


def test_cli_reads_bucket_from_env(
    single_model_bucket: str,
    dest: Path,
    moto_url: str,
    monkeypatch: pytest.MonkeyPatch,
    model_data: bytes,
) -> None:
    monkeypatch.setenv("MODEL_BUCKET", single_model_bucket)
    monkeypatch.setenv("MODEL_PREFIX", PREFIX)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_url)

    status = run_cli("--dest", str(dest), "--quiet")

    assert status == 0
    assert (dest / "model.gguf").read_bytes() == model_data


def test_cli_without_bucket_is_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        run_cli("--quiet")

    assert caught.value.code == 2
    assert "pass --bucket or set MODEL_BUCKET" in capsys.readouterr().err


def test_missing_bucket_message(
    dest: Path, moto_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status = run_cli("--bucket", "no-such-models-bucket", "--dest", str(dest),
                     "--endpoint-url", moto_url, "--quiet")  # fmt: skip

    stderr = capsys.readouterr().err
    assert status == 1
    assert stderr.startswith("plan-model: error: bucket 'no-such-models-bucket' does not exist")
    assert "NoSuchBucket" in stderr
    assert stderr.count("\n") == 1


def test_invalid_bucket_name_message(
    dest: Path, moto_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status = run_cli("--bucket", "s3://my-models/plan-llama", "--dest", str(dest),
                     "--endpoint-url", moto_url, "--quiet")  # fmt: skip

    stderr = capsys.readouterr().err
    assert status == 1
    assert stderr.startswith("plan-model: error: invalid bucket name 's3://my-models/plan-llama'")
    assert "3 to 63 lowercase letters, digits, dots and hyphens" in stderr
    assert "the folder inside it as --prefix" in stderr
    assert stderr.count("\n") == 1


@pytest.mark.parametrize("name", ["my models", "s3://my-models", "models/v1", "", "a" * 256])
def test_bucket_name_rejected(name: str) -> None:
    with pytest.raises(ArtifactPullError) as caught:
        check_bucket_name(name)

    message = str(caught.value)
    assert message.startswith(f"invalid bucket name {name!r}: a bucket name is 3 to 63")
    assert "\n" not in message


@pytest.mark.parametrize(
    "name",
    [
        "my-models",
        "models.example.com",
        "Legacy_Models",
        "arn:aws:s3:us-east-1:123456789012:accesspoint/models",
    ],
)
def test_bucket_name_accepted(name: str) -> None:
    check_bucket_name(name)


def test_invalid_arn_message(dest: Path, moto_url: str) -> None:
    with pytest.raises(ArtifactPullError) as caught:
        pull_artifacts("arn:aws:s3:::models", "", dest, endpoint_url=moto_url, progress=False)

    message = str(caught.value)
    assert message.startswith("invalid bucket name 'arn:aws:s3:::models'")
    assert "\n" not in message


def test_empty_prefix_message(
    single_model_bucket: str, dest: Path, moto_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status = run_cli("--bucket", single_model_bucket, "--prefix", "plan-llama/v9",
                     "--dest", str(dest), "--endpoint-url", moto_url, "--quiet")  # fmt: skip

    stderr = capsys.readouterr().err
    assert status == 1
    assert f"no objects under s3://{single_model_bucket}/plan-llama/v9/" in stderr
    assert stderr.count("\n") == 1


def test_no_credentials_message(
    single_model_bucket: str,
    dest: Path,
    moto_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")

    status = run_cli("--bucket", single_model_bucket, "--dest", str(dest),
                     "--endpoint-url", moto_url, "--quiet")  # fmt: skip

    stderr = capsys.readouterr().err
    assert status == 1
    assert stderr.startswith("plan-model: error: no AWS credentials found")
    assert "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY" in stderr
    assert "AWS_PROFILE" in stderr
    assert "Traceback" not in stderr


def test_unreachable_endpoint_message(dest: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        unused = f"http://127.0.0.1:{probe.getsockname()[1]}"

    status = run_cli("--bucket", "models", "--dest", str(dest), "--endpoint-url", unused,
                     "--quiet")  # fmt: skip

    stderr = capsys.readouterr().err
    assert status == 1
    assert stderr.startswith(f"plan-model: error: cannot reach the S3 endpoint {unused}")
    assert "Traceback" not in stderr


def test_unwritable_destination_message(
    single_model_bucket: str, tmp_path: Path, moto_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")

    status = run_cli("--bucket", single_model_bucket, "--dest", str(blocker / "artifacts"),
                     "--endpoint-url", moto_url, "--quiet")  # fmt: skip

    stderr = capsys.readouterr().err
    assert status == 1
    assert f"destination {blocker / 'artifacts'} is not writable" in stderr


# Messages for errors moto's server does not produce


def access_denied(operation: str) -> ClientError:
    response = {
        "Error": {"Code": "AccessDenied", "Message": "Access Denied"},
        "ResponseMetadata": {"HTTPStatusCode": 403},
    }
    return ClientError(response, operation)  # type: ignore[arg-type]


def test_list_access_denied_names_permission() -> None:
    where = S3Location("models", "plan-llama/v1/", "https://s3.us-east-1.amazonaws.com")

    message = str(pull_error(access_denied("ListObjectsV2"), "ListObjectsV2", where))

    assert message.startswith("access denied listing s3://models/plan-llama/v1/")
    assert "s3:ListBucket on arn:aws:s3:::models" in message
    assert "s3:GetObject on arn:aws:s3:::models/plan-llama/v1/*" in message


def test_get_access_denied_names_permission() -> None:
    where = S3Location(
        "models", "plan-llama/v1/", "https://s3.amazonaws.com", key="plan-llama/v1/model.gguf"
    )

    message = str(pull_error(access_denied("GetObject"), "GetObject", where))

    assert message.startswith("access denied reading s3://models/plan-llama/v1/model.gguf")
    assert "s3:GetObject on arn:aws:s3:::models/plan-llama/v1/*" in message


def test_server_invalid_bucket_name_message() -> None:
    response = {
        "Error": {"Code": "InvalidBucketName", "Message": "The specified bucket is not valid."},
        "ResponseMetadata": {"HTTPStatusCode": 400},
    }
    error = ClientError(response, "ListObjectsV2")  # type: ignore[arg-type]
    where = S3Location("ab", "", "https://s3.us-east-1.amazonaws.com")

    message = str(pull_error(error, "ListObjectsV2", where))

    assert message.startswith("invalid bucket name 'ab': a bucket name is 3 to 63")
