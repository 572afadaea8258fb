"""Input images by http:// URL from a test server on 127.0.0.1 (and one on 127.0.0.2 that must never be
reached). Only loopback traffic: every URL here points at 127.0.0.1 or 127.0.0.2."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from tests.helpers import b64, decode_result_image, img2img, png_bytes, with_settings
from worker.config import UrlInputSettings
from worker.contract import parse_request
from worker.errors import UserError
from worker.jobs import run_job

IMAGE = png_bytes(64, 64, (250, 20, 20))
CAP = 50_000  # MAX_INPUT_IMAGE_BYTES in these tests
TIMEOUT_S = 0.5


class Server:
    def __init__(self, host: str, routes: dict[str, tuple[int, dict[str, str], bytes]]):
        self.hits: list[str] = []
        self.release = threading.Event()  # ends the slow route early at teardown
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.hits.append(self.path)
                if self.path == "/slow":
                    self.send_response(200)
                    self.send_header("Content-Type", "image/png")
                    self.end_headers()
                    self.wfile.write(IMAGE[:100])
                    self.wfile.flush()
                    server.release.wait(5)  # bounded: the client gives up after TIMEOUT_S
                    return
                if self.path == "/chunked":  # HTTP/1.1 chunked transfer encoding, as CDNs often answer
                    self.protocol_version, self.close_connection = "HTTP/1.1", True
                    self.send_response(200)
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    for start in range(0, len(IMAGE), 100):
                        chunk = IMAGE[start : start + 100]
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    self.wfile.write(b"0\r\n\r\n")
                    return
                if self.path == "/drip":  # a byte at a time, each well within the read timeout
                    self.send_response(200)
                    self.end_headers()
                    for byte in IMAGE[:40]:
                        if server.release.wait(0.05):
                            return
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                    return
                status, headers, body = routes.get(self.path, (404, {}, b"not found"))
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value.format(port=server.port))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer((host, 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.block_on_close = False
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        host = self.httpd.server_address[0]
        return f"http://{host}:{self.port}{path}"

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def other() -> Iterator[Server]:
    """A server on 127.0.0.2: a redirect points here, and it must see no request."""
    server = Server("127.0.0.2", {"/image.png": (200, {"Content-Type": "image/png"}, IMAGE)})
    yield server
    server.close()


@pytest.fixture(scope="module")
def server(other: Server) -> Iterator[Server]:
    routes = {
        "/image.png": (200, {"Content-Type": "image/png", "Content-Length": str(len(IMAGE))}, IMAGE),
        "/text": (200, {"Content-Type": "image/png"}, b"<html>this is not an image</html>"),
        "/big": (200, {"Content-Length": str(CAP + 1)}, b"\0" * (CAP + 1)),
        "/big-unannounced": (200, {}, b"\0" * (CAP * 3)),  # no Content-Length: the cap applies while reading
        "/missing": (404, {}, b"nope"),
        "/hop": (302, {"Location": "/image.png"}, b""),
        "/to-127-0-0-2": (302, {"Location": other.url("/image.png")}, b""),
        "/loop": (302, {"Location": "/loop"}, b""),
    }
    server = Server("127.0.0.1", routes)
    yield server
    server.close()


@pytest.fixture
def settings(runtime):
    """The session runtime's settings with loopback 127.0.0.1 allowed (and nothing else)."""
    urls = UrlInputSettings(timeout_s=TIMEOUT_S, max_redirects=3, allow_hosts=("127.0.0.1",))
    return dataclasses.replace(runtime.settings, url_inputs=urls, max_input_image_bytes=CAP)


def parse(url: str, settings) -> bytes:
    return parse_request({"workflow": {"1": {}}, "images": [{"name": "in.png", "image": url}]}, settings).images[
        "in.png"
    ]


def test_loopback_server_is_refused_by_default(runtime, server: Server) -> None:
    hits = len(server.hits)
    with pytest.raises(UserError, match=r"127\.0\.0\.1 is a loopback address; refused"):
        parse(server.url("/image.png"), runtime.settings)
    assert len(server.hits) == hits  # refused before connecting


def test_allowed_server_serves_the_image(server: Server, settings) -> None:
    assert parse(server.url("/image.png"), settings) == IMAGE


def test_chunked_response(server: Server, settings) -> None:
    assert parse(server.url("/chunked"), settings) == IMAGE


def test_redirect_is_followed_and_checked(server: Server, settings) -> None:
    assert parse(server.url("/hop"), settings) == IMAGE


def test_redirect_to_another_loopback_address_is_refused_before_connecting(
    server: Server, other: Server, settings
) -> None:
    with pytest.raises(UserError, match=r"127\.0\.0\.2 is a loopback address; refused"):
        parse(server.url("/to-127-0-0-2"), settings)
    assert other.hits == []
    # The same redirect is followed when the policy allows 127.0.0.2: the refusal above came from the check.
    loopback = dataclasses.replace(settings.url_inputs, allow_hosts=("127.0.0.0/8",))
    wider = dataclasses.replace(settings, url_inputs=loopback)
    assert parse(server.url("/to-127-0-0-2"), wider) == IMAGE
    assert other.hits == ["/image.png"]


def test_redirect_loops_end(server: Server, settings) -> None:
    with pytest.raises(UserError, match="more than 3 redirects"):
        parse(server.url("/loop"), settings)


def test_non_image_bytes_are_refused(server: Server, settings) -> None:
    with pytest.raises(UserError, match=r"input\.images\[0\] \('in\.png'\)\.image is not a readable image"):
        parse(server.url("/text"), settings)


@pytest.mark.parametrize("path", ["/big", "/big-unannounced"])
def test_body_over_the_cap_is_refused(server: Server, settings, path: str) -> None:
    with pytest.raises(UserError, match=f"limit is {CAP}|over the limit of {CAP} bytes"):
        parse(server.url(path), settings)


def test_http_errors_are_reported(server: Server, settings) -> None:
    with pytest.raises(UserError, match="answered HTTP 404"):
        parse(server.url("/missing"), settings)


@pytest.mark.parametrize("path", ["/slow", "/drip"])
def test_slow_server_hits_the_deadline(server: Server, settings, path: str) -> None:
    started = time.monotonic()
    with pytest.raises(UserError, match=f"timed out after {TIMEOUT_S:g}s"):
        parse(server.url(path), settings)
    # One deadline for the whole download, not one per read (the drip route would take 2 s).
    assert time.monotonic() - started < TIMEOUT_S + 0.5


def test_img2img_from_a_url_matches_img2img_from_base64(runtime, server: Server, settings) -> None:
    allowed = with_settings(runtime, url_inputs=settings.url_inputs, max_input_image_bytes=CAP)
    by_url = run_job(allowed, {"id": "u", "input": {"workflow": img2img(denoise=0.0),
                                                     "images": [{"name": "input.png", "image": server.url("/hop")}]}})
    by_data = run_job(allowed, {"id": "d", "input": {"workflow": img2img(denoise=0.0),
                                                      "images": [{"name": "input.png", "image": b64(IMAGE)}]}})
    assert "images" in by_url, by_url
    assert np.array_equal(np.asarray(decode_result_image(by_url["images"][0])),
                          np.asarray(decode_result_image(by_data["images"][0])))


def test_refused_url_fails_the_job_before_any_model_work(runtime, server: Server) -> None:
    result = run_job(runtime, {"id": "r", "input": {"workflow": img2img(),
                                                    "images": [{"name": "input.png", "image": server.url("/x.png")}]}})
    assert "loopback address; refused" in result["error"]
    assert "input.images[0] ('input.png').image URL http://127.0.0.1:" in result["error"]
