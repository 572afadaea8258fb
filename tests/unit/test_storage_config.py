"""BUCKET_* and URL_INPUT_* settings: read from the environment or RunPod secrets, half-configurations reported."""

from __future__ import annotations

import pytest

from worker.config import ConfigError, Settings

KEYS = {"BUCKET_ACCESS_KEY_ID": "AKIDEXAMPLE", "BUCKET_SECRET_ACCESS_KEY": "very-secret-value"}


def test_storage_is_off_without_bucket_variables() -> None:
    storage = Settings.from_env({}).storage
    assert not storage.requested and not storage.enabled and storage.problem is None
    assert storage.describe() == "off"


def test_runpod_secrets_configure_storage() -> None:
    env = {f"RUNPOD_SECRET_{name}": value for name, value in KEYS.items()}
    env |= {"RUNPOD_SECRET_BUCKET_ENDPOINT_URL": "https://s3.eu-central-2.wasabisys.com/",
            "RUNPOD_SECRET_BUCKET_NAME": "renders"}
    storage = Settings.from_env(env).storage
    assert storage.enabled, storage.problem
    assert storage.endpoint_url == "https://s3.eu-central-2.wasabisys.com"
    assert storage.bucket == "renders"
    assert storage.region == "eu-central-2"  # from the endpoint's host
    assert storage.access_key_id == "AKIDEXAMPLE" and storage.secret_access_key == "very-secret-value"
    assert storage.upload == "always" and storage.presign_expires_s == 7 * 24 * 3600


def test_bucket_comes_from_a_virtual_hosted_endpoint_as_worker_comfyui_documents_it() -> None:
    env = {**KEYS, "BUCKET_ENDPOINT_URL": "https://my-outputs.s3.us-west-2.amazonaws.com"}
    storage = Settings.from_env(env).storage
    assert storage.enabled
    assert (storage.bucket, storage.endpoint_url) == ("my-outputs", "https://s3.us-west-2.amazonaws.com")
    assert storage.region == "us-west-2"


def test_r2_endpoint_keeps_its_account_host_and_region_auto() -> None:
    endpoint = "https://0123456789abcdef.r2.cloudflarestorage.com"
    storage = Settings.from_env({**KEYS, "BUCKET_ENDPOINT_URL": endpoint, "BUCKET_NAME": "out"}).storage
    assert (storage.endpoint_url, storage.bucket, storage.region) == (endpoint, "out", "auto")


@pytest.mark.parametrize(
    ("env", "missing"),
    [
        ({"BUCKET_ENDPOINT_URL": "http://minio:9000", "BUCKET_NAME": "b"}, "BUCKET_ACCESS_KEY_ID, BUCKET_SECRET"),
        ({**KEYS, "BUCKET_ENDPOINT_URL": "http://minio:9000"}, "BUCKET_NAME"),
        ({"BUCKET_ACCESS_KEY_ID": "a", "BUCKET_NAME": "b"}, "BUCKET_SECRET_ACCESS_KEY"),
    ],
)
def test_half_configured_storage_is_reported_not_faked(env: dict[str, str], missing: str) -> None:
    storage = Settings.from_env(env).storage
    assert storage.requested and not storage.enabled
    assert storage.problem is not None and missing in storage.problem
    assert storage.describe().startswith("misconfigured: half-configured")


def test_describe_never_shows_credentials() -> None:
    storage = Settings.from_env({**KEYS, "BUCKET_NAME": "b", "BUCKET_ENDPOINT_URL": "http://m:9000"}).storage
    for text in (storage.describe(), repr(storage), repr(Settings.from_env({**KEYS, "BUCKET_NAME": "b"}))):
        assert "very-secret-value" not in text and "AKIDEXAMPLE" not in text


@pytest.mark.parametrize(
    ("env", "culprit"),
    [
        ({"BUCKET_ADDRESSING_STYLE": "dns"}, "BUCKET_ADDRESSING_STYLE"),
        ({"BUCKET_KEY_TEMPLATE": "{date}/{filename}"}, "BUCKET_KEY_TEMPLATE"),  # collides across jobs
        ({"BUCKET_KEY_TEMPLATE": "{job_id}/{name}"}, "BUCKET_KEY_TEMPLATE"),
        ({"BUCKET_KEY_TEMPLATE": "{job_id/{filename}"}, "BUCKET_KEY_TEMPLATE"),
        ({"BUCKET_PRESIGN_EXPIRES": "604801"}, "BUCKET_PRESIGN_EXPIRES"),
        ({"BUCKET_ENDPOINT_URL": "minio:9000"}, "BUCKET_ENDPOINT_URL"),
        ({"BUCKET_UPLOAD": "sometimes"}, "BUCKET_UPLOAD"),
        ({"URL_INPUT_ALLOW_HOSTS": "10.0.0.0/33"}, "URL_INPUT_ALLOW_HOSTS"),
        ({"URL_INPUT_ALLOW_PRIVATE": "maybe"}, "URL_INPUT_ALLOW_PRIVATE"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], culprit: str) -> None:
    with pytest.raises(ConfigError, match=culprit):
        Settings.from_env({**KEYS, "BUCKET_NAME": "b", **env})


def test_url_input_settings() -> None:
    default = Settings.from_env({}).url_inputs
    assert default.enabled and not default.allow_private and default.allow_hosts == ()
    custom = Settings.from_env(
        {"URL_INPUT_ALLOW_HOSTS": " MinIO.internal, 10.0.0.0/8 ", "URL_INPUT_ALLOW_PRIVATE": "true",
         "URL_INPUT_TIMEOUT_S": "5", "URL_INPUTS": "off"}
    ).url_inputs
    assert custom.allow_hosts == ("minio.internal", "10.0.0.0/8")
    assert custom.allow_private and custom.timeout_s == 5 and not custom.enabled
