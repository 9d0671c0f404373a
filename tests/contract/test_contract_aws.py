"""Contract tests of the `aws` provider: AWS Secrets Manager cannot run here, so moto's server
stands in for it (a real HTTP server on 127.0.0.1 that speaks the Secrets Manager API), reached by
boto3 over a real socket through the provider's endpoint_url, as a LocalStack user would."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer
from provider_calls import get, get_within_timeout

from conveyor.ports import free_port
from conveyor.secrets.aws import AwsProvider
from conveyor.secrets.base import ProviderUnavailable, SecretError

pytestmark = pytest.mark.contract

REGION = "eu-west-1"
PREFIX = "shop/production/"


@pytest.fixture(autouse=True)
def fake_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    # moto accepts any key; set them so botocore never looks further (an instance role would be
    # asked at 169.254.169.254, off this host).
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def _admin(endpoint: str) -> Any:
    return boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing"
    ).client("secretsmanager", region_name=REGION, endpoint_url=endpoint)


def test_contract_aws_found(endpoint: str) -> None:
    created = _admin(endpoint).create_secret(Name=PREFIX + "STRIPE_KEY", SecretString="s3cr3t-v1")
    provider = AwsProvider(region=REGION, prefix=PREFIX, endpoint_url=endpoint, timeout=2)
    got = get(provider, "STRIPE_KEY")
    assert got is not None
    assert (got.name, got.value, got.provider) == ("STRIPE_KEY", "s3cr3t-v1", "aws")
    assert got.version == created["VersionId"]
    assert "s3cr3t" not in repr(got) and str(got) == "[secret:STRIPE_KEY]"


def test_contract_aws_versioned_read(endpoint: str) -> None:
    admin = _admin(endpoint)
    first = admin.create_secret(Name=PREFIX + "DATABASE_URL", SecretString="postgres://one")
    second = admin.put_secret_value(SecretId=PREFIX + "DATABASE_URL", SecretString="postgres://two")
    provider = AwsProvider(region=REGION, prefix=PREFIX, endpoint_url=endpoint, timeout=2)
    current = get(provider, "DATABASE_URL")
    old = get(provider, "DATABASE_URL", first["VersionId"])
    assert (current.value, current.version) == ("postgres://two", second["VersionId"])
    assert (old.value, old.version) == ("postgres://one", first["VersionId"])


def test_contract_aws_binary_secret_is_read_as_text(endpoint: str) -> None:
    _admin(endpoint).create_secret(Name=PREFIX + "CERT", SecretBinary=b"binary-but-text")
    provider = AwsProvider(region=REGION, prefix=PREFIX, endpoint_url=endpoint, timeout=2)
    assert get(provider, "CERT").value == "binary-but-text"


def test_contract_aws_not_found_is_none(endpoint: str) -> None:
    provider = AwsProvider(region=REGION, prefix=PREFIX, endpoint_url=endpoint, timeout=2)
    assert get(provider, "NO_SUCH_NAME") is None
    # An unknown version of an existing secret is absent too (32+ characters, as AWS wants).
    _admin(endpoint).create_secret(Name=PREFIX + "VERSIONED", SecretString="x")
    assert get(provider, "VERSIONED", "0" * 32) is None


def test_contract_aws_deleted_secret_is_none(endpoint: str) -> None:
    admin = _admin(endpoint)
    admin.create_secret(Name=PREFIX + "GONE", SecretString="x")
    admin.delete_secret(SecretId=PREFIX + "GONE", RecoveryWindowInDays=7)
    provider = AwsProvider(region=REGION, prefix=PREFIX, endpoint_url=endpoint, timeout=2)
    assert get(provider, "GONE") is None


def test_contract_aws_refused_connection_is_unavailable() -> None:
    # A port nobody listens on: refused at once, retried once, then unavailable.
    provider = AwsProvider(
        region=REGION, prefix=PREFIX, endpoint_url=f"http://127.0.0.1:{free_port()}", timeout=0.5
    )
    with pytest.raises(ProviderUnavailable, match=r"aws: .*shop/production/STRIPE_KEY"):
        get_within_timeout(provider, "STRIPE_KEY")


def test_contract_aws_silent_endpoint_is_unavailable_within_the_timeout() -> None:
    # A socket that accepts connections (the kernel's backlog) and never answers: only the read
    # timeout ends the call, and the provider's timeout bounds it as a whole.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        provider = AwsProvider(
            region=REGION, prefix=PREFIX, endpoint_url=f"http://127.0.0.1:{port}", timeout=0.3
        )
        with pytest.raises(ProviderUnavailable, match="aws: "):
            get_within_timeout(provider, "STRIPE_KEY")


def test_contract_aws_missing_credentials_are_unavailable(
    endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(var)
    # No shared files and no instance metadata service: botocore has nowhere to find a key.
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    provider = AwsProvider(region=REGION, prefix=PREFIX, endpoint_url=endpoint, timeout=1)
    with pytest.raises(ProviderUnavailable, match="credentials"):
        get(provider, "STRIPE_KEY")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"region": REGION, "prefx": "a/"}, "unknown setting 'prefx'"),
        ({"region": 5}, "region must be a string"),
        ({"region": REGION, "endpoint_url": "localhost:4566"}, "endpoint_url must be"),
    ],
)
def test_contract_aws_settings_are_checked(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(SecretError, match=message):
        AwsProvider.from_settings(settings)
    with pytest.raises(SecretError, match="timeout must be"):
        AwsProvider.from_settings({"region": REGION}, timeout=0)


def test_contract_aws_settings() -> None:
    # As the [secrets] aws table arrives: unset keys are None.
    provider = AwsProvider.from_settings(
        {
            "region": REGION,
            "prefix": PREFIX,
            "endpoint_url": "http://127.0.0.1:4566",
            "profile": None,
        },
        timeout=2,
    )
    assert (provider.region, provider.secret_id("X"), provider.timeout, provider.profile) == (
        REGION,
        PREFIX + "X",
        2.0,
        None,
    )


def test_contract_aws_region_from_the_environment(
    endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _admin(endpoint).create_secret(Name="plain/REGIONLESS", SecretString="found")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    provider = AwsProvider.from_settings({"prefix": "plain/", "endpoint_url": endpoint}, timeout=2)
    assert provider.region is None
    assert get(provider, "REGIONLESS").value == "found"
