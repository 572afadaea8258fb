"""Image-build helpers (worker/bake_models.py model entries), the Docker health check against servers on
127.0.0.1, and what the worker runtime reports as its health."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.helpers import TINY, with_settings
from worker.bake_models import FOLDERS, ModelEntry, fetch_model, main, parse_entries, parse_entry
from worker.config import Settings
from worker.healthcheck import check


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
        ("checkpoints/a.safetensors=", "expected"),
        ("/checkpoints/a.safetensors=https://x/a", "absolute"),
        ("checkpoints//a.safetensors=https://x/a", "empty path part"),
        ("checkpoints\\a.safetensors=https://x/a", "backslash"),
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


def test_model_folders_are_comfyuis() -> None:
    # The folders ComfyUI v0.8.0 searches (folder_paths.py); an entry outside them would never be found.
    assert {"checkpoints", "loras", "vae", "text_encoders", "diffusion_models", "upscale_models"} <= FOLDERS
    assert parse_entry("diffusion_models/flux.safetensors=https://x/f").target == "diffusion_models/flux.safetensors"


def test_a_failed_download_leaves_no_file(tmp_path: Path) -> None:
    server = _Server(404, b"no")
    try:
        entry = ModelEntry("loras/x.safetensors", f"http://127.0.0.1:{server.port}/x")
        with pytest.raises(OSError):
            fetch_model(entry, tmp_path, token=None)
        assert server.headers == [""]  # no token, no Authorization header
        assert not (tmp_path / "loras" / "x.safetensors").exists()
    finally:
        server.close()


def test_main_checks_every_entry_before_downloading(tmp_path: Path) -> None:
    server = _Server(200, b"weights")
    try:
        good = f"loras/x.safetensors=http://127.0.0.1:{server.port}/x"
        with pytest.raises(ValueError, match="must start with"):
            main([str(tmp_path), "--models", f"{good}, weights/y.bin=https://x/y"])
        assert server.headers == [] and not list(tmp_path.iterdir())
        token = tmp_path / "token"
        token.write_text("hf_abc\n")
        main([str(tmp_path / "models"), "--models", good, "--token-file", str(token)])
        assert (tmp_path / "models" / "loras" / "x.safetensors").read_bytes() == b"weights"
        assert server.headers == ["Bearer hf_abc"]
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


# --- the runtime's health (GET /health's "worker" section) -----------------------------------------------------


def test_runtime_health_reports_the_embedded_comfyui(runtime) -> None:
    health = runtime.health()
    json.dumps(health)  # served as JSON as it is
    assert (health["device"], health["gpu"]) == ("cpu", None)
    comfyui = health["comfyui"]
    assert comfyui["version"] == "0.8.0" and comfyui["matches_pin"] is True
    assert comfyui["commit"] == comfyui["pinned_commit"] and len(comfyui["commit"]) == 40
    # ComfyUI's built-in nodes and ours, counted also where their module is imported on first use only.
    assert comfyui["node_types"] >= len(runtime.engine.node_types) and comfyui["node_types"] > 300
    assert isinstance(comfyui["builtin_modules_failed"], dict)
    deferred = comfyui["deferred_imports"]  # worker/embed/deferred.py, on under NODE_IMPORTS=lazy
    assert deferred["deferred"] >= deferred["not_run"] and deferred["deferred"] > 0
    assert all(seconds >= 0 for seconds in deferred["run_on_use"].values())
    # worker/embed/transformers_imports.py: transformers' table read from the cache dir, or built into it.
    assert comfyui["transformers_import_table"]["cache"] in ("hit", "built")
    assert health["preloaded_checkpoints"] == [TINY]
    assert health["warmup"] and all(entry["error"] is None for entry in health["warmup"].values())
    assert [key.split()[0] for key in health["warmup"]] == [TINY]
    assert "BaseModel" in {model["model"] for model in health["resident_models"]}
    assert health["storage"] == "off"
    assert health["boot_seconds"]["boot_total"] >= health["boot_seconds"]["load_and_warmup"] > 0
    # The checkpoint's load is part of the warm-up, timed by ComfyUI's loader node.
    assert health["boot_seconds"]["load_and_warmup"] > health["boot_seconds"]["model_load"] > 0
    assert health["attention"] is not None
    assert set(health["custom_nodes"]) == {"dirs", "loaded", "failed"}


def test_runtime_health_shows_storage_without_credentials(runtime) -> None:
    env = {"BUCKET_ENDPOINT_URL": "http://127.0.0.1:9", "BUCKET_NAME": "outputs",
           "BUCKET_ACCESS_KEY_ID": "AKIDHEALTH", "BUCKET_SECRET_ACCESS_KEY": "s3cr3t-health"}
    storage = Settings.from_env(env).storage
    health = with_settings(runtime, storage=storage).health()
    assert health["storage"].startswith("bucket 'outputs' at http://127.0.0.1:9, upload=always")
    text = json.dumps(health)
    assert "s3cr3t-health" not in text and "AKIDHEALTH" not in text
    half = Settings.from_env({"BUCKET_NAME": "outputs"}).storage
    assert with_settings(runtime, storage=half).health()["storage"].startswith("misconfigured: half-configured")
