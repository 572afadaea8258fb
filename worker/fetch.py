"""Input images by URL: http(s):// from the internet, s3://bucket/key from the configured object store.

A worker that fetches URLs for its clients can be pointed at its own network (SSRF): cloud metadata at
169.254.169.254, services on loopback or the private network. So each host name is resolved once, every
address it resolves to is checked, the connection goes to a checked address (a second lookup could answer
differently: DNS rebinding), and redirects are followed here, one checked hop at a time. Downloads have a
size cap and one deadline for the whole chain; the caller checks that the bytes are an image.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import unquote, urljoin, urlsplit

import certifi
import urllib3
from urllib3.exceptions import ConnectTimeoutError, HTTPError, NewConnectionError, ReadTimeoutError

from worker.config import Settings, StorageSettings, UrlInputSettings
from worker.errors import UserError
from worker.storage import describe_error, s3_errors, store_for

Resolver = Callable[[str, int], list[str]]
_Response = urllib3.BaseHTTPResponse
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_CHUNK = 64 * 1024
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
# Metadata services that are not link-local: refused even with URL_INPUT_ALLOW_PRIVATE.
_METADATA = frozenset(ipaddress.ip_address(a) for a in ("fd00:ec2::254", "100.100.100.200"))
_HEADERS = {"User-Agent": "runpod-comfy-worker", "Accept": "image/*", "Accept-Encoding": "identity"}


class FetchError(UserError):
    """An input URL could not be used; the message names the URL (without its query) and the cause."""


def is_url(text: str) -> bool:
    return text[:8].lower().startswith(("http://", "https://", "s3://"))


def fetch_image_bytes(url: str, settings: Settings, resolve: Resolver | None = None) -> bytes:
    """The bytes behind an input URL, at most MAX_INPUT_IMAGE_BYTES."""
    if url[:5].lower() == "s3://":
        return fetch_s3(url, settings.storage, settings.max_input_image_bytes)
    if not settings.url_inputs.enabled:
        raise FetchError("is a URL, but URL inputs are off on this worker (URL_INPUTS); send base64 data")
    return fetch_url(url, settings.url_inputs, settings.max_input_image_bytes, resolve or system_resolve)


def system_resolve(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise FetchError(f"host {host!r} cannot be resolved ({exc})") from None
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _embedded_ipv4(ip: IPAddress) -> IPAddress:
    """IPv6 forms that reach an IPv4 address (mapped, 6to4, Teredo, NAT64) are judged by that address."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped:
            return ip.ipv4_mapped
        if ip.sixtofour:
            return ip.sixtofour
        if ip.teredo:
            return ip.teredo[1]
        if ip in _NAT64:
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip


def address_kind(ip: IPAddress) -> str | None:
    """Why `ip` is not a public internet address, or None when it is one."""
    ip = _embedded_ipv4(ip)
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local or ip in _METADATA:
        return "link-local or cloud metadata"
    if ip.is_multicast:
        return "multicast"
    if ip.is_reserved:
        return "reserved"
    if ip.is_private:
        return "private"
    if not ip.is_global:
        return "non-public"  # e.g. carrier-grade NAT 100.64.0.0/10, documentation ranges
    return None


def address_refusal(host: str, address: str, policy: UrlInputSettings) -> str | None:
    """Why fetching `host` at `address` is refused under `policy`, or None when it is allowed."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone id
    kind = address_kind(ip)
    if kind is None:
        return None
    for entry in policy.allow_hosts:
        if entry == host.lower():
            return None
        try:
            if ip in ipaddress.ip_network(entry, strict=False):
                return None
        except ValueError:
            continue  # a host name entry
    if policy.allow_private and kind in ("private", "non-public"):
        return None
    where = f"{ip} is" if host.strip("[]") == str(ip) else f"{host} resolves to {ip},"
    return f"{where} a {kind} address; refused (allow it with URL_INPUT_ALLOW_HOSTS)"


@dataclass(frozen=True)
class _Target:
    scheme: str
    host: str  # as in the URL, without brackets
    port: int
    request_path: str
    host_header: str
    shown: str  # for messages and logs: no credentials, no query (it may hold a signature)

    @classmethod
    def parse(cls, url: str) -> _Target:
        parts = urlsplit(url)
        shown = f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}{parts.path}"
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            raise FetchError(f"URL {shown}: only http, https and s3 URLs are accepted")
        if parts.username is not None or parts.password is not None:
            raise FetchError(f"URL {shown}: credentials in URLs are not supported")
        try:
            port = parts.port or (443 if scheme == "https" else 80)
        except ValueError:
            raise FetchError(f"URL {shown}: the port is not valid") from None
        if not parts.hostname:
            raise FetchError(f"URL {shown}: no host")
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return cls(scheme, parts.hostname, port, path, parts.netloc.rsplit("@", 1)[-1], shown)


def _addresses(target: _Target, policy: UrlInputSettings, resolve: Resolver) -> list[str]:
    try:
        ipaddress.ip_address(target.host.split("%", 1)[0])
        addresses = [target.host]
    except ValueError:
        addresses = resolve(target.host, target.port)
    if not addresses:
        raise FetchError(f"URL {target.shown}: host {target.host!r} has no address")
    # Every address must pass: a name that also resolves to an internal address is refused whole.
    for address in addresses:
        refusal = address_refusal(target.host, address, policy)
        if refusal is not None:
            raise FetchError(f"URL {target.shown}: {refusal}")
    return addresses


def _open(target: _Target, address: str, deadline: float, headers: dict[str, str] | None = None,
          read_timeout: float | None = None) -> tuple[urllib3.HTTPConnectionPool, _Response]:
    remaining = max(deadline - time.monotonic(), 0.001)
    timeout = urllib3.Timeout(connect=remaining, read=min(remaining, read_timeout or remaining))
    pool: urllib3.HTTPConnectionPool
    if target.scheme == "https":
        # Connect to the checked address; SNI and the certificate check use the URL's host name.
        pool = urllib3.HTTPSConnectionPool(
            address,
            target.port,
            timeout=timeout,
            retries=False,
            cert_reqs="CERT_REQUIRED",
            ca_certs=certifi.where(),
            server_hostname=target.host,
            assert_hostname=target.host,
        )
    else:
        pool = urllib3.HTTPConnectionPool(address, target.port, timeout=timeout, retries=False)
    try:
        response = pool.urlopen(
            "GET",
            target.request_path,
            headers={**(_HEADERS if headers is None else headers), "Host": target.host_header},
            redirect=False,
            retries=False,
            preload_content=False,
            decode_content=False,
            assert_same_host=False,
        )
    except BaseException:
        pool.close()
        raise
    return pool, response


def _read(response: _Response, max_bytes: int, deadline: float, shown: str) -> bytes:
    length = response.headers.get("Content-Length", "")
    if length.isdigit() and int(length) > max_bytes:
        raise FetchError(f"URL {shown}: the image is {int(length)} bytes; the limit is {max_bytes}")
    chunks: list[bytes] = []
    total = 0
    sock = getattr(getattr(response, "connection", None), "sock", None)
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        if sock is not None:
            sock.settimeout(remaining)  # one deadline for the whole body, not one per read
        chunk = response.read1(_CHUNK)  # at most one receive: the deadline is checked between them
        if not chunk:
            return b"".join(chunks)
        total += len(chunk)
        if total > max_bytes:
            raise FetchError(f"URL {shown}: the image is over the limit of {max_bytes} bytes")
        chunks.append(chunk)


def connect(target: _Target, policy: UrlInputSettings, deadline: float, resolve: Resolver,
            headers: dict[str, str] | None = None, read_timeout: float | None = None,
            ) -> tuple[urllib3.HTTPConnectionPool, _Response]:
    """One hop: the host's addresses checked under `policy`, then a GET to the first that answers."""
    last_error: BaseException | None = None
    for address in _addresses(target, policy, resolve):
        try:
            return _open(target, address, deadline, headers, read_timeout)
        except (NewConnectionError, ConnectTimeoutError) as exc:
            last_error = exc  # try the host's next address
        except (HTTPError, OSError) as exc:
            raise _failure(target, exc, policy) from None
    raise _failure(target, last_error or OSError("no address"), policy)


def next_url(response: _Response, url: str, shown: str, error: type[UserError] = FetchError) -> str | None:
    """Where a redirect points (the next hop, checked like the first), None for a 200; `error` otherwise."""
    if response.status in _REDIRECTS:
        location = response.headers.get("Location")
        if not location:
            raise error(f"URL {shown}: HTTP {response.status} without a Location")
        return urljoin(url, location)
    if response.status != 200:
        raise error(f"URL {shown}: the server answered HTTP {response.status}")
    return None


def fetch_url(url: str, policy: UrlInputSettings, max_bytes: int, resolve: Resolver = system_resolve) -> bytes:
    """GET `url` (at most `max_bytes`), following redirects here so that each hop's addresses are checked."""
    deadline = time.monotonic() + policy.timeout_s
    for _hop in range(policy.max_redirects + 1):
        target = _Target.parse(url)
        pool, response = connect(target, policy, deadline, resolve)
        try:
            redirect = next_url(response, url, target.shown)
            if redirect is not None:
                url = redirect
                continue
            return _read(response, max_bytes, deadline, target.shown)
        except (HTTPError, OSError) as exc:
            raise _failure(target, exc, policy) from None
        finally:
            response.release_conn()
            pool.close()
    raise FetchError(f"URL {_Target.parse(url).shown}: more than {policy.max_redirects} redirects")


def _failure(target: _Target, exc: BaseException, policy: UrlInputSettings) -> FetchError:
    if isinstance(exc, TimeoutError | ReadTimeoutError | ConnectTimeoutError | socket.timeout):
        return FetchError(f"URL {target.shown}: timed out after {policy.timeout_s:g}s (URL_INPUT_TIMEOUT_S)")
    cause = getattr(exc, "reason", None) or exc
    return FetchError(f"URL {target.shown}: could not be downloaded ({type(cause).__name__}: {cause})")


def fetch_s3(url: str, storage: StorageSettings, max_bytes: int) -> bytes:
    parts = urlsplit(url)
    bucket, key = parts.netloc, unquote(parts.path.lstrip("/"))
    if not storage.enabled:
        raise FetchError(f"URL {url}: s3:// inputs need object storage (BUCKET_*), which is {storage.describe()}")
    if bucket != storage.bucket:
        raise FetchError(f"URL {url}: s3:// inputs are read from the configured bucket {storage.bucket!r} only")
    if not key:
        raise FetchError(f"URL {url}: no object key")
    try:
        return store_for(storage).get(bucket, key, max_bytes)
    except ValueError as exc:
        raise FetchError(f"URL {url}: the object {exc}") from None
    except s3_errors() as exc:
        raise FetchError(f"URL {url}: {describe_error(exc)}") from None
