"""One model file streamed from its URL into an open file, under the download policy.

Each hop (redirects are followed here) is checked before any connection: the scheme (https; http only with
MODEL_DOWNLOAD_ALLOW_HTTP), the host and port against MODEL_DOWNLOAD_HOSTS, and, for hosts of the default
list, every address the name resolves to (public only, as for URL inputs: worker/fetch.py). A host the
operator listed is trusted as written, its addresses included. Tokens go only to their own host over https,
never along a redirect to another host, and never into a message or log line.
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

from urllib3.exceptions import HTTPError, ProtocolError, ReadTimeoutError

from worker.config import HostRule, ModelDownloadSettings, UrlInputSettings
from worker.errors import JobCancelled, JobTimedOut, UserError
from worker.fetch import FetchError, Resolver, _Target, connect, next_url, system_resolve
from worker.stop import StopSignal

_MAX_REDIRECTS = 10
_CHUNK = 1024 * 1024
STALL_S = 60.0  # no byte for this long: the server is gone
# Tokens, by the exact host they belong to (their CDNs take signed URLs: no token is sent there).
_TOKEN_HOSTS = {"huggingface.co": "hf_token", "hf.co": "hf_token", "civitai.com": "civitai_token"}

Progress = Callable[[int, int | None], None]  # (bytes so far, total or None)


class DownloadError(UserError):
    """A model file could not be fetched; the message names the file and the URL without its query."""


@dataclass(frozen=True)
class Fetched:
    bytes: int
    sha256: str
    url: str  # the URL shown (no query), after redirects


def host_rule(target: _Target, settings: ModelDownloadSettings) -> HostRule | None:
    default = 443 if target.scheme == "https" else 80
    return next((r for r in settings.hosts if r.matches(target.host, target.port, default)), None)


def check_hop(url: str, settings: ModelDownloadSettings) -> tuple[_Target, UrlInputSettings]:
    """The hop's target and the address policy it is connected under; DownloadError when refused."""
    try:
        target = _Target.parse(url)
    except FetchError as exc:
        raise DownloadError(str(exc)) from None
    if target.scheme != "https" and not (target.scheme == "http" and settings.allow_http):
        raise DownloadError(f"URL {target.shown}: only https:// model downloads are allowed "
                            "(http:// needs MODEL_DOWNLOAD_ALLOW_HTTP=on)")
    rule = host_rule(target, settings)
    if rule is None:
        raise DownloadError(f"URL {target.shown}: host {target.host_header} is not in MODEL_DOWNLOAD_HOSTS "
                            f"({', '.join(_rule_text(r) for r in settings.hosts)})")
    # A trusted host passes address_refusal by name; the default list's names get no such pass.
    policy = UrlInputSettings(allow_hosts=(target.host.lower(),) if rule.trusted else ())
    return target, policy


def _rule_text(rule: HostRule) -> str:
    return rule.host + (f":{rule.port}" if rule.port is not None else "")


def auth_headers(target: _Target, settings: ModelDownloadSettings) -> dict[str, str]:
    field = _TOKEN_HOSTS.get(target.host.lower())
    token = getattr(settings, field) if field else None
    if token and target.scheme == "https":
        return {"Authorization": f"Bearer {token}"}
    return {}


def download(url: str, out: BinaryIO, settings: ModelDownloadSettings, stop: StopSignal, progress: Progress,
             limit: int, resolve: Resolver | None = None) -> Fetched:
    """GET `url` into `out` (at most `limit` bytes), hashing as it goes. Cancel closes the socket at once;
    the job's deadline and a STALL_S silence end the transfer too."""
    deadline = stop.deadline if stop.deadline is not None else time.monotonic() + 24 * 3600
    resolve = resolve or system_resolve
    for _hop in range(_MAX_REDIRECTS + 1):
        stop.check()
        target, policy = check_hop(url, settings)
        headers = {"User-Agent": "runpod-comfy-worker", "Accept": "*/*", "Accept-Encoding": "identity",
                   **auth_headers(target, settings)}
        try:
            pool, response = connect(target, policy, deadline, resolve, headers, read_timeout=STALL_S)
        except FetchError as exc:
            raise DownloadError(str(exc).replace(" (URL_INPUT_TIMEOUT_S)", "")) from None
        try:
            redirect = next_url(response, url, target.shown, DownloadError)
            if redirect is not None:
                url = redirect
                continue
            return _stream(response, out, target.shown, deadline, stop, progress, limit)
        finally:
            response.release_conn()
            pool.close()
    raise DownloadError(f"URL {_Target.parse(url).shown}: more than {_MAX_REDIRECTS} redirects")


def _stream(response, out: BinaryIO, shown: str, deadline: float, stop: StopSignal, progress: Progress,
            limit: int) -> Fetched:
    length = response.headers.get("Content-Length", "")
    total = int(length) if length.isdigit() else None
    if total is not None and total > limit:
        raise DownloadError(f"URL {shown}: the file is {total} bytes; the limit is {limit} "
                            "(MODEL_DOWNLOAD_MAX_BYTES, or the room left in MODEL_CACHE_MAX_BYTES)")
    sock = getattr(getattr(response, "connection", None), "sock", None)

    def hang_up() -> None:  # cancel, from another thread: the blocked recv returns at once
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    unsubscribe = stop.on_stop(hang_up)
    digest, done = hashlib.sha256(), 0
    progress(0, total)
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise JobTimedOut("job ran past its execution timeout")
            if sock is not None:
                sock.settimeout(min(remaining, STALL_S))
            try:
                chunk = response.read1(_CHUNK)
            except (ReadTimeoutError, TimeoutError):
                if stop.stopped:
                    stop.check()
                raise DownloadError(f"URL {shown}: no data for {STALL_S:g}s after {done} bytes") from None
            except (ProtocolError, HTTPError, OSError) as exc:
                if stop.cancelled:
                    raise JobCancelled("job was cancelled") from None
                raise DownloadError(f"URL {shown}: the transfer broke after {done} bytes "
                                    f"({type(exc).__name__})") from None
            if stop.cancelled:
                raise JobCancelled("job was cancelled")
            if not chunk:
                break
            done += len(chunk)
            if done > limit:
                raise DownloadError(f"URL {shown}: the file is over the limit of {limit} bytes "
                                    "(MODEL_DOWNLOAD_MAX_BYTES, or the room left in MODEL_CACHE_MAX_BYTES)")
            digest.update(chunk)
            out.write(chunk)
            progress(done, total)
    finally:
        unsubscribe()
    if total is not None and done != total:
        raise DownloadError(f"URL {shown}: the transfer ended after {done} of {total} bytes")
    if done == 0:
        raise DownloadError(f"URL {shown}: the server sent an empty file")
    return Fetched(bytes=done, sha256=digest.hexdigest(), url=shown)
