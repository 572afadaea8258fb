"""Docker HEALTHCHECK. In load-balancer mode (`handler.py --serve`) the server answers /ping: 200 is healthy,
204 (models loading) and anything else are not yet. In queue mode nothing listens on the port, which is
healthy: the runpod SDK talks to RunPod, not to a local port."""

from __future__ import annotations

import sys
import urllib.error
import urllib.request

from worker.config import Settings


def check(port: int, timeout_s: float = 3.0) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=timeout_s) as response:
            return 0 if response.status == 200 else 1
    except urllib.error.HTTPError:
        return 1
    except (ConnectionRefusedError, urllib.error.URLError) as exc:
        refused = isinstance(exc, ConnectionRefusedError) or isinstance(exc.reason, ConnectionRefusedError)
        return 0 if refused else 1
    except OSError:
        return 1


if __name__ == "__main__":
    settings = Settings.from_env()
    sys.exit(check(settings.port_health or settings.port))
