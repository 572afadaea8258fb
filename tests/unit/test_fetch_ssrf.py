"""The address checks of URL inputs, as pure functions and through an injected resolver. Nothing here opens a
connection: `_open` is replaced by a function that fails the test if it is ever reached."""

from __future__ import annotations

import pytest

from worker import fetch
from worker.config import Settings, UrlInputSettings
from worker.fetch import FetchError, address_refusal, fetch_url

DEFAULT = UrlInputSettings()
REFUSED = [
    "169.254.169.254",  # cloud metadata
    "10.0.0.1",
    "192.168.1.1",
    "172.16.0.1",
    "127.0.0.1",
    "127.8.9.10",
    "0.0.0.0",
    "::1",
    "::",
    "fd00::1",
    "fd00:ec2::254",  # AWS metadata over IPv6
    "fe80::1",
    "100.64.0.1",  # carrier-grade NAT
    "100.100.100.200",  # Alibaba metadata
    "224.0.0.1",
    "240.0.0.1",
    "255.255.255.255",
    "::ffff:127.0.0.1",  # IPv4-mapped
    "::ffff:169.254.169.254",
    "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
    "2002:c0a8:0101::1",  # 6to4 of 192.168.1.1
    "fe80::1%eth0",
]


@pytest.fixture(autouse=True)
def no_connections(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("the check must refuse before any connection is made")

    monkeypatch.setattr(fetch, "_open", refuse)


@pytest.mark.parametrize("address", REFUSED)
def test_internal_addresses_are_refused(address: str) -> None:
    refusal = address_refusal("some.host", address, DEFAULT)
    assert refusal is not None and "refused" in refusal


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "151.101.1.69"])
def test_public_addresses_pass_the_check(address: str) -> None:
    assert address_refusal("some.host", address, DEFAULT) is None


def test_refusal_names_host_address_and_kind() -> None:
    message = address_refusal("metadata.evil.test", "169.254.169.254", DEFAULT)
    assert message == (
        "metadata.evil.test resolves to 169.254.169.254, a link-local or cloud metadata address; "
        "refused (allow it with URL_INPUT_ALLOW_HOSTS)"
    )
    assert address_refusal("10.0.0.1", "10.0.0.1", DEFAULT).startswith("10.0.0.1 is a private address")


def test_allow_private_opens_private_ranges_but_not_loopback_or_metadata() -> None:
    policy = UrlInputSettings(allow_private=True)
    assert address_refusal("h", "10.0.0.1", policy) is None
    assert address_refusal("h", "fd00::1", policy) is None
    assert address_refusal("h", "100.64.0.1", policy) is None
    for address in ("127.0.0.1", "169.254.169.254", "fd00:ec2::254", "0.0.0.0", "::1"):
        assert address_refusal("h", address, policy) is not None, address


def test_allow_hosts_by_address_network_and_name() -> None:
    policy = UrlInputSettings(allow_hosts=("127.0.0.1", "10.0.0.0/8", "minio.internal"))
    assert address_refusal("x", "127.0.0.1", policy) is None
    assert address_refusal("x", "127.0.0.2", policy) is not None
    assert address_refusal("x", "10.20.30.40", policy) is None
    assert address_refusal("x", "192.168.1.1", policy) is not None
    assert address_refusal("MinIO.internal", "192.168.1.1", policy) is None


@pytest.mark.parametrize("address", ["169.254.169.254", "10.0.0.1", "192.168.1.1", "172.16.0.1", "127.0.0.1",
                                     "0.0.0.0", "::1", "fd00::1"])
def test_names_resolving_to_internal_addresses_are_refused(address: str) -> None:
    asked: list[tuple[str, int]] = []

    def resolve(host: str, port: int) -> list[str]:
        asked.append((host, port))
        return [address]

    with pytest.raises(FetchError, match=rf"innocent\.example resolves to {address.replace('.', '[.]')}"):
        fetch_url("https://innocent.example/cat.png?sig=secret", DEFAULT, 1000, resolve=resolve)
    assert asked == [("innocent.example", 443)]  # resolved once


def test_one_internal_address_among_public_ones_refuses_the_name() -> None:
    def resolve(host: str, port: int) -> list[str]:
        return ["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c", "10.1.2.3"]

    with pytest.raises(FetchError, match=r"10\.1\.2\.3, a private address"):
        fetch_url("http://mixed.example:8080/x.png", DEFAULT, 1000, resolve=resolve)


def test_address_literals_are_checked_without_resolving() -> None:
    def resolve(host: str, port: int) -> list[str]:
        raise AssertionError("an address literal needs no lookup")

    for url in ("http://169.254.169.254/latest/meta-data/", "http://[::1]:8000/x", "http://[::ffff:a00:1]/",
                "http://0.0.0.0:8000/"):
        with pytest.raises(FetchError, match="refused"):
            fetch_url(url, DEFAULT, 1000, resolve=resolve)


def test_message_leaves_out_query_and_credentials() -> None:
    with pytest.raises(FetchError) as caught:
        fetch_url("http://10.0.0.1/x.png?X-Amz-Signature=abc", DEFAULT, 1000, resolve=lambda h, p: [])
    assert "X-Amz-Signature" not in str(caught.value) and "http://10.0.0.1/x.png" in str(caught.value)
    with pytest.raises(FetchError, match="credentials in URLs"):
        fetch_url("https://user:pw@host.example/x.png", DEFAULT, 1000, resolve=lambda h, p: [])


@pytest.mark.parametrize("url", ["ftp://host.example/x.png", "file:///etc/passwd", "gopher://h/"])
def test_other_schemes_are_refused(url: str) -> None:
    with pytest.raises(FetchError, match="only http, https and s3"):
        fetch_url(url, DEFAULT, 1000, resolve=lambda h, p: ["8.8.8.8"])


def test_s3_inputs_need_configured_storage_and_its_bucket() -> None:
    with pytest.raises(FetchError, match="need object storage"):
        fetch.fetch_image_bytes("s3://outputs/in.png", Settings.from_env({}))
    configured = Settings.from_env(
        {"BUCKET_ACCESS_KEY_ID": "a", "BUCKET_SECRET_ACCESS_KEY": "b", "BUCKET_NAME": "mine",
         "BUCKET_ENDPOINT_URL": "http://127.0.0.1:9"}
    )
    with pytest.raises(FetchError, match="configured bucket 'mine' only"):
        fetch.fetch_image_bytes("s3://someone-elses/in.png", configured)


def test_url_inputs_can_be_switched_off() -> None:
    with pytest.raises(FetchError, match="URL_INPUTS"):
        fetch.fetch_image_bytes("https://host.example/x.png", Settings.from_env({"URL_INPUTS": "off"}))
