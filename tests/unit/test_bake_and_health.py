"""Image-build helpers (model entries) and the Docker health check, against servers on 127.0.0.1."""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from worker.healthcheck import check
from worker.models.bake import ModelEntry, fetch_model, parse_entries, parse_entry


def test_model_entries_parse() -> None:
    entries = parse_entries("checkpoints/a.safetensors=hf://o/r/a.safetensors@abc, loras/b.safetensors=https://x/b")
    assert entries == [
        ModelEntry("checkpoints/a.safetensors", "hf://o/r/a.safetensors@abc"),
        ModelEntry("loras/b.safetensors", "https://x/b"),
    ]
    assert parse_entries("") == []


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("checkpoints/a.safetensors", "expected"),
        ("../a.safetensors=https://x/a", "'..'"),
        ("weights/a.safetensors=https://x/a", "must start with"),
        ("checkpoints/a.safetensors=ftp://x/a", "source"),
        ("checkpoints/a.safetensors=hf://only-repo", "hf://<owner>/<repo>/<path"),
    ],
)
def test_bad_model_entries_are_refused(text: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        parse_entry(text)


class _Server:
    def __init__(self, status: int, body: bytes = b"") -> None:
        self.headers: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.headers.append(self.headers.get("Authorization", ""))
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()


def test_fetch_model_over_http_sends_the_token_and_writes_atomically(tmp_path: Path) -> None:
    server = _Server(200, b"weights")
    try:
        entry = ModelEntry("loras/x.safetensors", f"http://127.0.0.1:{server.port}/x")
        path = fetch_model(entry, tmp_path, token="secret")
        assert path.read_bytes() == b"weights"
        assert server.headers == ["Bearer secret"]
        assert not list(tmp_path.rglob("*.partial"))
    finally:
        server.close()


def test_health_check_follows_ping_and_accepts_no_listener() -> None:
    ready, loading = _Server(200, b"{}"), _Server(204)
    try:
        assert check(ready.port) == 0
        assert check(loading.port) == 1
    finally:
        ready.close()
        loading.close()
    with socket.socket() as probe:  # a port nothing listens on: queue mode
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    assert check(free) == 0
