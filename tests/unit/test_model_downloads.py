"""worker/downloads without ComfyUI: request entries, the host and address policy, tokens, the cache's
atomic writes, locks and eviction, against a file server on 127.0.0.1 started here. No connection leaves
127.0.0.0/8: fetch._open is wrapped to fail the test on any other address."""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import json
import os
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.model_server import ModelServer
from worker import fetch
from worker.config import ConfigError, HostRule, ModelDownloadSettings, Settings
from worker.downloads import DownloadError, ModelCache, ModelSpec, ensure, parse_models
from worker.downloads.cache import FileLock
from worker.downloads.http import auth_headers, check_hop
from worker.errors import UserError
from worker.fetch import _Target
from worker.stop import StopSignal

REPO = Path(__file__).resolve().parents[2]


def st_bytes(floats: int, fill: float = 0.5) -> bytes:
    """A valid safetensors file of one F32 tensor."""
    header = json.dumps({"w": {"dtype": "F32", "shape": [floats], "data_offsets": [0, 4 * floats]}}).encode()
    return struct.pack("<Q", len(header)) + header + struct.pack(f"<{floats}f", *([fill] * floats))


LORA = st_bytes(64)
BIG = st_bytes(4096)


class DirFolders:
    """The Folders protocol over a plain directory: kinds are its sub-folders' names."""

    def __init__(self, root: Path):
        self.root = root

    def kinds(self) -> set[str]:
        return {"loras", "checkpoints"}

    def subfolder(self, kind: str) -> str:
        return kind

    def find(self, kind: str, name: str) -> Path | None:
        path = self.root / kind / name
        return path if path.is_file() else None

    def register(self, root: Path) -> None:
        assert root == self.root

    def refresh(self, kind: str) -> None:
        pass


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    connected: list[str] = []
    original = fetch._open

    def guarded(target, address, *args, **kwargs):
        if ipaddress.ip_address(address) not in ipaddress.ip_network("127.0.0.0/8"):
            raise AssertionError(f"a connection to {address} was attempted")
        connected.append(address)
        return original(target, address, *args, **kwargs)

    monkeypatch.setattr(fetch, "_open", guarded)
    return connected


@pytest.fixture(scope="module")
def server():
    routes = {
        "/lora.safetensors": (200, {}, LORA),
        "/big.safetensors": (200, {}, BIG),
        "/nolength.safetensors": (200, {"Connection": "close", "Content-Length": ""}, BIG),
        "/to-private": (302, {"Location": "http://10.0.0.1/lora.safetensors"}, b""),
        "/to-cdn": (302, {"Location": "https://cdn-lfs.hf.co/repo/lora.safetensors"}, b""),
        "/hop": (302, {"Location": "/lora.safetensors"}, b""),
        "/truncated.safetensors": (200, {}, b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\""),
    }
    srv = ModelServer(routes)
    yield srv
    srv.close()


def settings_for(tmp_path: Path, server: ModelServer, **changes) -> ModelDownloadSettings:
    base = ModelDownloadSettings(cache_dir=tmp_path, allow_http=True,
                                 hosts=(HostRule("127.0.0.1", server.port, trusted=True),
                                        *ModelDownloadSettings().hosts))
    return dataclasses.replace(base, **changes)


def spec(server: ModelServer, path: str = "/lora.safetensors", name: str = "style.safetensors",
         sha256: str | None = None) -> ModelSpec:
    return ModelSpec(server.url(path), "loras", name, sha256, where="input.models[0]")


def files_in(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and ".worker-downloads"
                  not in p.parts)


# --- request entries ---------------------------------------------------------------------------------
def test_parse_models_accepts_entries_and_refuses_bad_names_all_at_once() -> None:
    good = parse_models([{"url": "https://huggingface.co/a/b.safetensors", "directory": "loras",
                          "name": "b.safetensors", "sha256": "A" * 64}])
    assert good[0].sha256 == "a" * 64 and good[0].label == "loras/b.safetensors"
    with pytest.raises(UserError) as raised:
        parse_models([
            {"url": "https://huggingface.co/x", "directory": "loras", "name": "../evil.safetensors"},
            {"url": "https://huggingface.co/x", "directory": "loras", "name": "sub/x.safetensors"},
            {"url": "https://huggingface.co/x", "directory": "loras", "name": "model.pkl"},
            {"url": "file:///etc/passwd", "directory": "../x", "name": "a.gguf", "sha256": "xyz"},
        ])
    problems = raised.value.problems
    assert len(problems) == 6
    assert "'..' and '.' path parts are not allowed" in problems[0]
    assert "without folders" in problems[1] and "extension is not one of" in problems[2]
    assert any("expected an https:// URL" in p for p in problems)
    assert any("sha256: expected 64 hexadecimal digits" in p for p in problems)


def test_host_settings_from_env() -> None:
    models = Settings.from_env({"MODEL_DOWNLOAD_HOSTS": "default,127.0.0.1:8080,Mirror.internal",
                                "MODEL_CACHE_MAX_BYTES": "2GiB", "MODEL_DOWNLOAD_MAX_BYTES": "off",
                                "RUNPOD_SECRET_HF_TOKEN": "hf_secret"}).models
    trusted = [r for r in models.hosts if r.trusted]
    assert trusted == [HostRule("127.0.0.1", 8080, True), HostRule("mirror.internal", None, True)]
    assert any(r.host == "huggingface.co" and not r.trusted for r in models.hosts)
    assert models.cache_max_bytes == 2 * 2**30 and models.hf_token == "hf_secret"
    assert "hf_secret" not in repr(models)
    with pytest.raises(ConfigError, match="MODEL_DOWNLOAD_HOSTS"):
        Settings.from_env({"MODEL_DOWNLOAD_HOSTS": "https://x.test/path"})


def test_model_cache_dir_is_a_model_root(tmp_path: Path) -> None:
    settings = Settings.from_env({"MODEL_CACHE_DIR": str(tmp_path)})
    assert settings.models.cache_dir == tmp_path and settings.model_roots[-1] == tmp_path


# --- the policy of each hop ---------------------------------------------------------------------------
def test_scheme_and_host_checks() -> None:
    settings = ModelDownloadSettings()
    check_hop("https://huggingface.co/a/b.safetensors", settings)
    check_hop("https://cas-bridge.xethub.hf.co/x", settings)
    with pytest.raises(DownloadError, match=r"only https:// model downloads .*MODEL_DOWNLOAD_ALLOW_HTTP"):
        check_hop("http://huggingface.co/a", settings)
    with pytest.raises(DownloadError, match=r"host evil\.test is not in MODEL_DOWNLOAD_HOSTS"):
        check_hop("https://evil.test/a.safetensors", settings)
    with pytest.raises(DownloadError, match=r"host huggingface\.co:8443 is not in MODEL_DOWNLOAD_HOSTS"):
        check_hop("https://huggingface.co:8443/a", settings)
    with pytest.raises(DownloadError, match="not in MODEL_DOWNLOAD_HOSTS"):
        check_hop("https://evilhf.co/a", settings)  # "*.hf.co" is a sub-domain match, not a suffix


def test_tokens_go_only_to_their_own_host_over_https() -> None:
    settings = ModelDownloadSettings(hf_token="hf_x", civitai_token="cv_y", allow_http=True)
    assert auth_headers(_Target.parse("https://huggingface.co/a"), settings) == {"Authorization": "Bearer hf_x"}
    assert auth_headers(_Target.parse("https://civitai.com/api/download/models/1"), settings) == {
        "Authorization": "Bearer cv_y"}
    for url in ("https://cdn-lfs.hf.co/a", "http://huggingface.co/a", "https://civitai.com.evil.test/a"):
        assert auth_headers(_Target.parse(url), settings) == {}


def test_disallowed_host_is_refused_and_leaves_no_file(tmp_path: Path, server: ModelServer,
                                                       loopback_only: list[str]) -> None:
    settings = settings_for(tmp_path, server, hosts=(HostRule("127.0.0.1", server.port + 1, trusted=True),))
    before = sum(server.hits.values())
    with pytest.raises(UserError, match=f"host 127.0.0.1:{server.port} is not in MODEL_DOWNLOAD_HOSTS"):
        ensure([spec(server)], DirFolders(tmp_path), settings, StopSignal())
    assert sum(server.hits.values()) == before and not loopback_only and files_in(tmp_path) == []


def test_redirect_to_a_private_address_is_refused_before_connecting(tmp_path: Path, server: ModelServer,
                                                                    loopback_only: list[str]) -> None:
    settings = settings_for(tmp_path, server)
    with pytest.raises(UserError, match=r"host 10\.0\.0\.1 is not in MODEL_DOWNLOAD_HOSTS"):
        ensure([spec(server, "/to-private")], DirFolders(tmp_path), settings, StopSignal())
    # A listed name of the default list that resolves to a private address: refused by the address check.
    with pytest.raises(UserError, match=r"cdn-lfs\.hf\.co resolves to 10\.0\.0\.1, a private address; refused"):
        ensure([spec(server, "/to-cdn")], DirFolders(tmp_path), settings, StopSignal(),
               resolve=lambda host, port: ["10.0.0.1"])
    with pytest.raises(UserError, match=r"169\.254\.169\.254, a link-local or cloud metadata address"):
        ensure([spec(server, "/to-cdn")], DirFolders(tmp_path), settings, StopSignal(),
               resolve=lambda host, port: ["169.254.169.254"])
    assert set(loopback_only) == {"127.0.0.1"} and files_in(tmp_path) == []


# --- what is kept -------------------------------------------------------------------------------------
def test_download_then_reuse_without_a_request(tmp_path: Path, server: ModelServer) -> None:
    settings = settings_for(tmp_path, server)
    events: list[dict] = []
    sha = hashlib.sha256(LORA).hexdigest()
    before = server.hits.get("/hop", 0)
    first = ensure([spec(server, "/hop", sha256=sha)], DirFolders(tmp_path), settings, StopSignal(), events.append)
    assert first[0]["status"] == "downloaded" and first[0]["bytes"] == len(LORA)
    assert (tmp_path / "loras" / "style.safetensors").read_bytes() == LORA
    assert events[-1]["bytes"] == events[-1]["total"] == len(LORA) and events[-1]["file"] == "loras/style.safetensors"
    again = ensure([spec(server, "/hop", sha256=sha)], DirFolders(tmp_path), settings, StopSignal())
    assert again[0]["status"] == "present" and server.hits["/hop"] == before + 1
    assert files_in(tmp_path) == ["loras/style.safetensors"]
    record = ModelCache(settings).record("loras", "style.safetensors")
    assert record is not None and record["sha256"] == sha and record["url"] == server.url("/lora.safetensors")


@pytest.mark.parametrize(("path", "changes", "message"), [
    ("/lora.safetensors", {}, "the file's sha256 is .*, not the 0000.* the request gives; it was not kept"),
    ("/big.safetensors", {"max_bytes": 1000}, r"the file is \d+ bytes; the limit is 1000"),
    ("/nolength.safetensors", {"max_bytes": 1000}, "the file is over the limit of 1000 bytes"),
    ("/truncated.safetensors", {}, "the transfer ended after|not a safetensors file"),
])
def test_refused_downloads_leave_no_file(tmp_path: Path, server: ModelServer, path: str, changes: dict,
                                         message: str) -> None:
    settings = settings_for(tmp_path, server, **changes)
    wrong = "0" * 64 if not changes and path == "/lora.safetensors" else None
    with pytest.raises(UserError, match=message):
        ensure([spec(server, path, sha256=wrong)], DirFolders(tmp_path), settings, StopSignal())
    assert files_in(tmp_path) == []
    assert not list((tmp_path / ".worker-downloads").rglob("*.json"))


def test_present_file_with_another_sha256_is_refused_and_kept(tmp_path: Path, server: ModelServer) -> None:
    (tmp_path / "loras").mkdir()
    (tmp_path / "loras" / "mine.safetensors").write_bytes(LORA)
    settings = settings_for(tmp_path, server)
    with pytest.raises(UserError, match=r"has sha256 .* it is left as it is"):
        ensure([spec(server, name="mine.safetensors", sha256="1" * 64)], DirFolders(tmp_path), settings,
               StopSignal())
    assert (tmp_path / "loras" / "mine.safetensors").read_bytes() == LORA


def test_lru_eviction_removes_downloaded_files_only(tmp_path: Path, server: ModelServer) -> None:
    (tmp_path / "loras").mkdir()
    (tmp_path / "loras" / "operator.safetensors").write_bytes(BIG)  # the operator's: never evicted
    settings = settings_for(tmp_path, server, cache_max_bytes=len(LORA) * 2 + 10)
    folders = DirFolders(tmp_path)
    ensure([spec(server, name="a.safetensors")], folders, settings, StopSignal())
    time.sleep(0.01)
    ensure([spec(server, name="b.safetensors")], folders, settings, StopSignal())
    ensure([spec(server, name="c.safetensors")], folders, settings, StopSignal())  # a is the oldest
    assert files_in(tmp_path) == ["loras/b.safetensors", "loras/c.safetensors", "loras/operator.safetensors"]
    assert ModelCache(settings).health()["downloaded_bytes"] == 2 * len(LORA)
    with pytest.raises(UserError, match="the limit is"):  # larger than the whole budget
        ensure([spec(server, "/big.safetensors", name="d.safetensors")], folders, settings, StopSignal())


def test_stale_lock_of_a_dead_worker_is_broken_and_its_part_file_removed(tmp_path: Path,
                                                                         server: ModelServer) -> None:
    settings = settings_for(tmp_path, server, lock_stale_s=10)
    lock = ModelCache(settings).lock("loras", "style.safetensors")
    assert lock.try_acquire()  # a worker that died holding it
    (tmp_path / "loras").mkdir()
    part = tmp_path / "loras" / ".style.safetensors.dead.part"
    part.write_bytes(b"half")
    old = time.time() - 60
    os.utime(lock.path, (old, old))
    os.utime(part, (old, old))
    result = ensure([spec(server)], DirFolders(tmp_path), settings, StopSignal())
    assert result[0]["status"] == "downloaded" and not part.exists() and not lock.path.exists()


def test_a_fresh_lock_is_not_broken(tmp_path: Path) -> None:
    lock = FileLock(tmp_path / "x.lock", stale_s=10)
    assert lock.try_acquire()
    other = FileLock(tmp_path / "x.lock", stale_s=10)
    assert not other.try_acquire() and not other.break_if_stale()
    lock.release()
    assert other.try_acquire()


def test_cancel_stops_a_download(tmp_path: Path) -> None:
    slow = ModelServer({"/slow.safetensors": (200, {}, BIG)}, chunk_delay_s=0.5)
    try:
        settings = settings_for(tmp_path, slow)
        stop = StopSignal()
        started = time.monotonic()
        import threading

        threading.Timer(0.3, stop.cancel).start()
        with pytest.raises(Exception, match="cancelled"):
            ensure([spec(slow, "/slow.safetensors")], DirFolders(tmp_path), settings, stop)
        assert time.monotonic() - started < 2.0 and files_in(tmp_path) == []
        stop = StopSignal(deadline=time.monotonic() + 0.3)
        with pytest.raises(Exception, match="execution timeout"):
            ensure([spec(slow, "/slow.safetensors")], DirFolders(tmp_path), settings, stop)
        assert files_in(tmp_path) == []
    finally:
        slow.close()


_RACER = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from tests.unit.test_model_downloads import DirFolders, settings_for, spec
    from worker.downloads import ensure
    from worker.stop import StopSignal
    root, port = Path(sys.argv[1]), int(sys.argv[2])
    class S:  # what settings_for and spec read of the server
        def __init__(self, port): self.port = port
        def url(self, path): return f"http://127.0.0.1:{self.port}{path}"
    server = S(port)
    print(json.dumps(ensure([spec(server, "/slow.safetensors")], DirFolders(root), settings_for(root, server),
                            StopSignal())))
""")


def test_two_worker_processes_on_one_folder_fetch_the_file_once(tmp_path: Path) -> None:
    slow = ModelServer({"/slow.safetensors": (200, {}, BIG)}, chunk_delay_s=0.15)
    try:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        racers = [subprocess.Popen([sys.executable, "-c", _RACER, str(tmp_path), str(slow.port)], cwd=REPO,
                                   env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                  for _ in range(2)]
        results = [json.loads(p.communicate(timeout=60)[0]) for p in racers]
        assert all(p.returncode == 0 for p in racers)
        assert slow.hits == {"/slow.safetensors": 1}
        assert sorted(r[0]["status"] for r in results) in (["downloaded", "waited"], ["downloaded", "present"])
        assert (tmp_path / "loras" / "style.safetensors").read_bytes() == BIG
        assert files_in(tmp_path) == ["loras/style.safetensors"]
    finally:
        slow.close()
