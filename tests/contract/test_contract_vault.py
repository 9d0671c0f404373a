"""Contract tests of the `vault` provider: Vault cannot run here, so a recorded-response server
(vault_replay.py, answers in vault_responses/*.json from Vault's KV v2 API documentation) stands in
for it, reached by hvac over a real socket on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from provider_calls import get, get_within_timeout
from vault_replay import TOKEN, Replay, vault_replay

from conveyor.ports import free_port
from conveyor.secrets.base import ProviderUnavailable, SecretError
from conveyor.secrets.vault import VaultProvider

pytestmark = pytest.mark.contract


@pytest.fixture(scope="module")
def vault() -> Iterator[Replay]:
    with vault_replay() as replay:
        yield replay


def _provider(
    url: str, token: str | None = TOKEN, mount: str = "secret", path: str = "shop/production"
) -> VaultProvider:
    environ = {} if token is None else {"VAULT_TOKEN": token}
    return VaultProvider(url=url, mount=mount, path=path, timeout=2, environ=environ)


def test_contract_vault_reads_a_key_of_the_latest_version(vault: Replay) -> None:
    got = get(_provider(vault.url), "STRIPE_KEY")
    assert (got.name, got.value, got.version, got.provider) == (
        "STRIPE_KEY",
        "stripe-test-value-3",
        "3",
        "vault",
    )
    assert vault.seen[-1] == ("GET", "/v1/secret/data/shop/production", {}, TOKEN, None)


def test_contract_vault_versioned_read(vault: Replay) -> None:
    got = get(_provider(vault.url), "DATABASE_URL", "1")
    assert (got.value, got.version) == ("postgres://app@db.internal/shop-v1", "1")
    assert vault.seen[-1][:3] == ("GET", "/v1/secret/data/shop/production", {"version": "1"})


def test_contract_vault_a_key_absent_from_that_version_is_none(vault: Replay) -> None:
    # STRIPE_KEY was added in a later version.
    assert get(_provider(vault.url), "STRIPE_KEY", "1") is None
    assert get(_provider(vault.url), "NO_SUCH_KEY") is None


def test_contract_vault_not_found_and_deleted_versions_are_none(vault: Replay) -> None:
    assert get(_provider(vault.url, path="shop/nothing-here"), "STRIPE_KEY") is None
    assert get(_provider(vault.url), "STRIPE_KEY", "2") is None
    assert get(_provider(vault.url), "STRIPE_KEY", "not-a-number") is None


def test_contract_vault_permission_denied_is_unavailable(vault: Replay) -> None:
    with pytest.raises(
        ProviderUnavailable, match="permission denied reading secret/shop/production"
    ):
        get(_provider(vault.url, token="hvs.revoked"), "STRIPE_KEY")


def test_contract_vault_without_a_token_is_unavailable_and_asks_nothing(vault: Replay) -> None:
    before = len(vault.seen)
    with pytest.raises(ProviderUnavailable, match="set VAULT_TOKEN"):
        get(_provider(vault.url, token=None), "STRIPE_KEY")
    assert len(vault.seen) == before


def test_contract_vault_sealed_is_unavailable(vault: Replay) -> None:
    with pytest.raises(ProviderUnavailable, match=r"VaultDown.*sealed"):
        get(_provider(vault.url, mount="sealed"), "STRIPE_KEY")


def test_contract_vault_a_kv1_mount_is_named(vault: Replay) -> None:
    with pytest.raises(ProviderUnavailable, match="not a KV version 2 secret"):
        get(_provider(vault.url, mount="kv1"), "STRIPE_KEY")


def test_contract_vault_refused_connection_is_unavailable() -> None:
    with pytest.raises(ProviderUnavailable, match="no answer from"):
        get(_provider(f"http://127.0.0.1:{free_port()}"), "STRIPE_KEY")


def test_contract_vault_silent_server_is_unavailable_within_the_timeout(vault: Replay) -> None:
    provider = VaultProvider(
        url=vault.url, mount="hang", path="shop", timeout=0.3, environ={"VAULT_TOKEN": TOKEN}
    )
    with pytest.raises(ProviderUnavailable, match="no answer from"):
        get_within_timeout(provider, "STRIPE_KEY")


def test_contract_vault_sends_the_namespace(vault: Replay) -> None:
    provider = VaultProvider.from_settings(
        {"url": vault.url, "path": "shop/production", "namespace": "team-a", "mount": None},
        environ={"VAULT_TOKEN": TOKEN},
    )
    assert get(provider, "STRIPE_KEY").value == "stripe-test-value-3"
    assert vault.seen[-1][4] == "team-a"


def test_contract_vault_settings() -> None:
    provider = VaultProvider.from_settings(
        {"path": "/shop/production/"}, environ={"VAULT_ADDR": "http://127.0.0.1:8200"}
    )
    assert (provider.url, provider.mount, provider.path, provider.where) == (
        "http://127.0.0.1:8200",
        "secret",
        "shop/production",
        "secret/shop/production",
    )


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"path": "shop"}, "url is required"),
        ({"url": "http://127.0.0.1:8200"}, "path is required"),
        ({"url": "http://127.0.0.1:8200", "path": "a", "token": "x"}, "unknown setting 'token'"),
        ({"url": "http://127.0.0.1:8200", "path": 3}, "path must be a string"),
    ],
)
def test_contract_vault_settings_are_checked(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(SecretError, match=message):
        VaultProvider.from_settings(settings, environ={})
    with pytest.raises(SecretError, match="timeout must be"):
        VaultProvider.from_settings({"url": "http://127.0.0.1:8200", "path": "a"}, timeout=0)
