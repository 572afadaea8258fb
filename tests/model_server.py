"""A model file server on 127.0.0.1 for the download tests: fixed routes, a count of requests per path, the
headers of each request, and an optional delay between chunks (so two workers overlap)."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class ModelServer:
    def __init__(self, routes: dict[str, tuple[int, dict[str, str], bytes]], chunk_delay_s: float = 0.0):
        self.routes = routes
        self.hits: dict[str, int] = {}
        self.headers: list[dict[str, str]] = []
        self.chunk_delay_s = chunk_delay_s
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.hits[self.path] = server.hits.get(self.path, 0) + 1
                server.headers.append(dict(self.headers))
                status, headers, body = server.routes.get(self.path, (404, {}, b"not found"))
                self.send_response(status)
                if "Content-Length" not in headers and status == 200:
                    self.send_header("Content-Length", str(len(body)))
                for name, value in headers.items():
                    self.send_header(name, value.format(port=server.port))
                self.end_headers()
                step = max(1, len(body) // 8)
                for start in range(0, len(body), step):
                    try:
                        self.wfile.write(body[start:start + step])
                        self.wfile.flush()
                    except OSError:
                        return
                    if server.chunk_delay_s:
                        time.sleep(server.chunk_delay_s)

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
