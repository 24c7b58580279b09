"""create_model and `plan-model create` through the real ollama client, against FakeOllama."""

from __future__ import annotations

import hashlib
import random
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import ollama
import pytest

from app.cli.model import main
from app.modelstore import ModelCreateError, create_model, resolve_host
from tests.support.fake_ollama import FakeOllama, unused_local_url

TEMPLATE = (
    "{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n"
    "\n"
    "{{ .Content }}<|eot_id|>\n"
    "{{- end }}<|start_header_id|>assistant<|end_header_id|>\n"
    "\n"
)
MODELFILE = f'''# The plan model, as model/Modelfile writes it.
FROM ./artifacts/plan-test.Q4_K_M.gguf

TEMPLATE """{TEMPLATE}"""
SYSTEM "Translate the utterance into a Lispress plan."
PARAMETER temperature 0
PARAMETER num_ctx 8192
PARAMETER stop "<|eot_id|>"
PARAMETER stop "<|start_header_id|>"
'''
WEIGHTS_NAME = "plan-test.Q4_K_M.gguf"


@pytest.fixture
def server() -> Iterator[FakeOllama]:
    with FakeOllama(models=["llama3.1"]) as fake:
        yield fake


@pytest.fixture
def weights() -> bytes:
    return b"GGUF" + random.Random(11).randbytes(300_000)


@pytest.fixture
def modelfile(tmp_path: Path, weights: bytes) -> Path:
    (tmp_path / "artifacts").mkdir()
    (tmp_path / "artifacts" / WEIGHTS_NAME).write_bytes(weights)
    path = tmp_path / "Modelfile"
    path.write_text(MODELFILE, encoding="utf-8")
    return path


class NotFoundHandler(BaseHTTPRequestHandler):
    """Handler that records each GET path and returns 404, like a web server that is not Ollama."""

    paths: list[str]

    def do_GET(self) -> None:
        self.paths.append(self.path)
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def other_server() -> Iterator[tuple[str, list[str]]]:
    """An HTTP server on 127.0.0.1 that is not Ollama, and the paths it was asked for."""
    paths: list[str] = []
    handler = type("RecordingNotFoundHandler", (NotFoundHandler,), {"paths": paths})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", paths
    server.shutdown()
    server.server_close()
    thread.join()


def digest_of(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def write_modelfile(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "Other.Modelfile"
    path.write_text(text, encoding="utf-8")
    return path


def blob_uploads(server: FakeOllama) -> list[str]:
    return [r.path for r in server.requests if r.method == "POST" and "/api/blobs/" in r.path]


def blob_checks(server: FakeOllama) -> list[str]:
    return [r.path for r in server.requests if r.method == "HEAD" and "/api/blobs/" in r.path]


def test_create_sends_template_parameters_digest(
    server: FakeOllama, modelfile: Path, weights: bytes
) -> None:
    lines: list[str] = []

    result = create_model(modelfile, "plan-test", server.url, echo=lines.append)

    request = server.created_models["plan-test:latest"]
    assert request["model"] == "plan-test"
    assert request["files"] == {WEIGHTS_NAME: digest_of(weights)}
    assert request["template"] == TEMPLATE
    assert request["system"] == "Translate the utterance into a Lispress plan."
    assert request["parameters"] == {
        "temperature": 0,
        "num_ctx": 8192,
        "stop": ["<|eot_id|>", "<|start_header_id|>"],
    }
    assert "from" not in request
    assert server.blobs[digest_of(weights)] == weights
    assert result.uploaded == (digest_of(weights),)
    assert result.statuses[-1] == "success"
    assert lines[-1] == "success"
    assert f"using existing layer {digest_of(weights)}" in lines


def test_created_model_is_listed(server: FakeOllama, modelfile: Path) -> None:
    create_model(modelfile, "plan-test", server.url, echo=lambda _line: None)

    names = [entry.model for entry in ollama.Client(host=server.url).list().models]

    assert "plan-test:latest" in names


def test_second_create_reuses_blob(server: FakeOllama, modelfile: Path, weights: bytes) -> None:
    first = create_model(modelfile, "plan-test", server.url, echo=lambda _line: None)
    second = create_model(modelfile, "plan-test", server.url, echo=lambda _line: None)

    assert blob_uploads(server) == [f"/api/blobs/{digest_of(weights)}"]
    assert len(blob_checks(server)) == 2
    assert first.uploaded == (digest_of(weights),)
    assert second.uploaded == ()
    assert second.reused == (digest_of(weights),)
    assert len(server.requests_to("/api/create")) == 2


def test_from_model_name_sends_from(server: FakeOllama, tmp_path: Path) -> None:
    path = write_modelfile(tmp_path, "FROM llama3.1\nPARAMETER num_ctx 4096\n")

    create_model(path, "plan-test", server.url, echo=lambda _line: None)

    request = server.created_models["plan-test:latest"]
    assert request["from"] == "llama3.1"
    assert "files" not in request
    assert request["parameters"] == {"num_ctx": 4096}
    assert blob_uploads(server) == []


def test_adapter_uploaded_as_blob(server: FakeOllama, modelfile: Path, tmp_path: Path) -> None:
    adapter = b"GGUF-lora" + bytes(1000)
    (tmp_path / "lora.gguf").write_bytes(adapter)
    modelfile.write_text(MODELFILE + "ADAPTER ./lora.gguf\n", encoding="utf-8")

    create_model(modelfile, "plan-test", server.url, echo=lambda _line: None)

    assert server.created_models["plan-test:latest"]["adapters"] == {
        "lora.gguf": digest_of(adapter)
    }
    assert server.blobs[digest_of(adapter)] == adapter


def test_missing_weights_is_clear_error(server: FakeOllama, tmp_path: Path) -> None:
    path = write_modelfile(tmp_path, "FROM ./artifacts/absent.gguf\n")

    with pytest.raises(ModelCreateError) as caught:
        create_model(path, "plan-test", server.url, echo=lambda _line: None)

    message = str(caught.value)
    assert message.startswith("FROM on line 1 names './artifacts/absent.gguf'")
    assert "does not exist: run `plan-model pull` first" in message
    assert server.requests == []


def test_non_gguf_from_is_rejected(server: FakeOllama, tmp_path: Path) -> None:
    passwd = tmp_path / "passwd"
    passwd.write_text("root:x:0:0:root:/root:/bin/bash\n", encoding="utf-8")
    path = write_modelfile(tmp_path, f"FROM {passwd}\n")

    with pytest.raises(ModelCreateError) as caught:
        create_model(path, "plan-test", server.url, echo=lambda _line: None)

    message = str(caught.value)
    assert message.startswith(f"FROM on line 1 names {passwd}, which is not a GGUF file")
    assert "it starts with b'root', not b'GGUF'" in message
    assert "Only GGUF files are supported by this command" in message
    assert server.requests == []
    assert "plan-test:latest" not in server.created_models


def test_empty_from_file_is_rejected(server: FakeOllama, tmp_path: Path) -> None:
    (tmp_path / "empty.gguf").write_bytes(b"")
    path = write_modelfile(tmp_path, "FROM ./empty.gguf\n")

    with pytest.raises(ModelCreateError) as caught:
        create_model(path, "plan-test", server.url, echo=lambda _line: None)

    assert "which is not a GGUF file (it is empty, not b'GGUF')" in str(caught.value)
    assert server.requests == []


def test_from_folder_is_rejected(server: FakeOllama, tmp_path: Path) -> None:
    (tmp_path / "safetensors-model").mkdir()
    path = write_modelfile(tmp_path, "FROM ./safetensors-model\n")

    with pytest.raises(ModelCreateError) as caught:
        create_model(path, "plan-test", server.url, echo=lambda _line: None)

    message = str(caught.value)
    assert message.startswith("FROM on line 1 names the folder")
    assert "only GGUF files are supported by this command" in message
    assert "safetensors folders are not" in message
    assert server.requests == []


def test_non_gguf_adapter_is_rejected(server: FakeOllama, modelfile: Path, tmp_path: Path) -> None:
    (tmp_path / "lora.safetensors").write_bytes(bytes(1000))
    modelfile.write_text(MODELFILE + "ADAPTER ./lora.safetensors\n", encoding="utf-8")

    with pytest.raises(ModelCreateError) as caught:
        create_model(modelfile, "plan-test", server.url, echo=lambda _line: None)

    assert str(caught.value).startswith("ADAPTER names ")
    assert "which is not a GGUF file" in str(caught.value)
    assert server.requests == []


def test_cli_non_gguf_from(
    server: FakeOllama, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "notes.txt").write_text("not weights", encoding="utf-8")
    path = write_modelfile(tmp_path, "FROM ./notes.txt\n")

    status = main(["create", "--modelfile", str(path), "--host", server.url])

    stderr = capsys.readouterr().err
    assert status == 1
    assert stderr.startswith("plan-model: error: FROM on line 1 names ")
    assert "Only GGUF files are supported by this command" in stderr
    assert stderr.count("\n") == 1


def test_server_checked_before_hashing(server: FakeOllama, modelfile: Path) -> None:
    create_model(modelfile, "plan-test", server.url, echo=lambda _line: None)

    first = server.requests[0]
    assert (first.method, first.path) == ("GET", "/api/version")
    assert blob_checks(server) != []


def test_server_error_is_reported(server: FakeOllama, tmp_path: Path) -> None:
    path = write_modelfile(tmp_path, "FROM some-model-not-pulled\n")

    with pytest.raises(ModelCreateError) as caught:
        create_model(path, "plan-test", server.url, echo=lambda _line: None)

    message = str(caught.value)
    assert message.startswith(f"Ollama at {server.url} could not create model 'plan-test'")
    assert "pull model manifest: file does not exist" in message
    assert "plan-test:latest" not in server.created_models


def test_unreachable_ollama_is_clear_error(modelfile: Path) -> None:
    host = unused_local_url()

    with pytest.raises(ModelCreateError) as caught:
        create_model(modelfile, "plan-test", host, echo=lambda _line: None)

    assert str(caught.value).startswith(f"cannot connect to Ollama at {host}")
    assert "OLLAMA_HOST" in str(caught.value)


def test_unreachable_ollama_hashes_nothing(modelfile: Path) -> None:
    lines: list[str] = []

    with pytest.raises(ModelCreateError):
        create_model(modelfile, "plan-test", unused_local_url(), echo=lines.append)

    assert lines == []


def test_non_ollama_server_is_clear_error(
    modelfile: Path, other_server: tuple[str, list[str]]
) -> None:
    url, paths = other_server
    lines: list[str] = []

    with pytest.raises(ModelCreateError) as caught:
        create_model(modelfile, "plan-test", url, echo=lines.append)

    message = str(caught.value)
    assert message.startswith(f"{url} returned HTTP 404 and no Ollama version for GET /api/version")
    assert "check --host or OLLAMA_HOST" in message
    assert paths == ["/api/version"]
    assert lines == []


def test_cli_unreachable_ollama(modelfile: Path, capsys: pytest.CaptureFixture[str]) -> None:
    host = unused_local_url()

    status = main(["create", "--modelfile", str(modelfile), "--name", "plan-test", "--host", host])

    stderr = capsys.readouterr().err
    assert status == 1
    assert stderr.startswith(f"plan-model: error: cannot connect to Ollama at {host}")
    assert stderr.count("\n") == 1


def test_cli_defaults_from_settings(
    server: FakeOllama,
    modelfile: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("LOCAL_MODEL_NAME", "plan-from-env")
    monkeypatch.setenv("OLLAMA_HOST", server.url)

    status = main(["create", "--modelfile", str(modelfile)])

    stdout = capsys.readouterr().out
    assert status == 0
    assert "plan-from-env:latest" in server.created_models
    assert "writing manifest\nsuccess\n" in stdout
    assert stdout.endswith(f"plan-model: created model plan-from-env on {server.url}\n")


def test_cli_invalid_modelfile(
    server: FakeOllama, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_modelfile(tmp_path, "FROM llama3.1\nPARAMETER stop\n")

    status = main(["create", "--modelfile", str(path), "--host", server.url])

    stderr = capsys.readouterr().err
    assert status == 1
    assert stderr == f"plan-model: error: {path}, line 2: PARAMETER needs a name and a value\n"


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        (None, "http://127.0.0.1:11434"),
        ("", "http://127.0.0.1:11434"),
        ("ollama", "http://ollama:11434"),
        ("10.0.0.5:8000", "http://10.0.0.5:8000"),
        ("http://ollama", "http://ollama:80"),
        ("https://ollama.example.com/", "https://ollama.example.com:443"),
        ("http://[::1]:11434", "http://[::1]:11434"),
    ],
)
def test_resolve_host(host: str | None, expected: str) -> None:
    assert resolve_host(host) == expected


# The fake server's side of the protocol, as the ollama client and Ollama's API docs describe it


def test_fake_rejects_blob_with_wrong_digest(server: FakeOllama) -> None:
    wrong = digest_of(b"something else")

    response = httpx.post(f"{server.url}/api/blobs/{wrong}", content=b"weights")

    assert response.status_code == 400
    assert response.json()["error"].startswith(f'digest mismatch, expected "{wrong}"')
    assert server.blobs == {}


def test_fake_rejects_create_with_unknown_blob(server: FakeOllama) -> None:
    missing = digest_of(b"never uploaded")
    client = ollama.Client(host=server.url)

    with pytest.raises(ollama.ResponseError) as caught:
        list(client.create(model="plan-test", files={"w.gguf": missing}, stream=True))

    assert caught.value.status_code == 400
    assert "no such file or directory" in caught.value.error
    assert "plan-test:latest" not in server.created_models


def test_fake_create_without_stream(server: FakeOllama) -> None:
    digest = server.add_blob(b"GGUF weights")
    client = ollama.Client(host=server.url)

    response = client.create(model="plan-test", files={"w.gguf": digest}, stream=False)

    assert response.status == "success"
    assert "plan-test:latest" in server.created_models
