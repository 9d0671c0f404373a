"""The `vault` provider: HashiCorp Vault's KV version 2 engine through hvac (the `vault` extra).

Layout: one Vault secret per environment, each NAME a key inside it. With mount = "secret" and
path = "shop/production", STRIPE_KEY is the key STRIPE_KEY of the secret written by

    vault kv put -mount=secret shop/production STRIPE_KEY=... DATABASE_URL=...

which is how envconsul, Vault Agent templates and the External Secrets Operator read an app's
settings. The version of a value is that secret's KV version (metadata.version): KV v2 versions
the secret as a whole, so every NAME read at one moment shares one version, and `--version N`
reads the secret as it was at version N.

The token comes from VAULT_TOKEN in the agent's environment (never from conveyor.toml); the URL
from the `url` setting, else VAULT_ADDR. A timeout, a refused connection, a missing or refused
token (403) or a sealed Vault make the provider unavailable, so the resolver tries the next one.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
from collections.abc import Mapping
from typing import Any

from conveyor.secrets.base import ProviderUnavailable, SecretError, SecretValue

KIND = "vault"
DEFAULT_TIMEOUT = 5.0
DEFAULT_MOUNT = "secret"
SETTINGS = ("url", "mount", "path", "namespace")


class VaultProvider:
    """Vault KV v2: the keys of the secret at `mount`/`path`."""

    def __init__(
        self,
        *,
        url: str,
        path: str,
        mount: str = DEFAULT_MOUNT,
        namespace: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        environ: Mapping[str, str] | None = None,
        name: str = KIND,
    ) -> None:
        self.name = name
        self.url = url
        self.path = path.strip("/")
        self.mount = mount.strip("/")
        self.namespace = namespace
        self.timeout = timeout
        self._environ = os.environ if environ is None else environ

    @classmethod
    def from_settings(
        cls,
        settings: Mapping[str, Any],
        timeout: float = DEFAULT_TIMEOUT,
        environ: Mapping[str, str] | None = None,
        name: str = KIND,
    ) -> VaultProvider:
        """From the `vault = { url = ..., mount = ..., path = ... }` table of conveyor.toml (a key
        set to None is unset). Raises SecretError naming a wrong key, ProviderUnavailable without
        hvac.
        """
        env = os.environ if environ is None else environ
        given = {key: value for key, value in settings.items() if value is not None}
        unknown = sorted(set(given) - set(SETTINGS))
        if unknown:
            raise SecretError(
                f"{name}: unknown setting {unknown[0]!r} (known: {', '.join(SETTINGS)})"
            )
        for key, value in given.items():
            if not isinstance(value, str):
                raise SecretError(f"{name}: {key} must be a string")
        url = given.get("url") or env.get("VAULT_ADDR")
        if not url or not url.startswith(("http://", "https://")):
            raise SecretError(
                f'{name}: url is required (e.g. url = "https://vault:8200", or VAULT_ADDR in the '
                "agent's environment)"
            )
        path = given.get("path", "")
        if not path.strip("/"):
            raise SecretError(f'{name}: path is required, e.g. path = "shop/production"')
        mount = given.get("mount", DEFAULT_MOUNT)
        if not mount.strip("/"):
            raise SecretError(f'{name}: mount must be the KV v2 engine\'s path, e.g. "secret"')
        if timeout <= 0:
            raise SecretError(f"{name}: timeout must be greater than 0")
        if importlib.util.find_spec("hvac") is None:
            raise ProviderUnavailable(f"{name}: hvac is not installed (conveyor-deploy[vault])")
        return cls(
            url=url,
            path=path,
            mount=mount,
            namespace=given.get("namespace") or env.get("VAULT_NAMESPACE"),
            timeout=timeout,
            environ=env,
            name=name,
        )

    @property
    def where(self) -> str:
        return f"{self.mount}/{self.path}"

    async def get(self, name: str, version: str | None = None) -> SecretValue | None:
        # Bounded by `timeout` as a whole; requests' own timeouts (half of it to connect, half to
        # read) end the thread soon after.
        call = asyncio.to_thread(self._get, name, version)
        try:
            return await asyncio.wait_for(call, self.timeout)
        except TimeoutError:
            raise ProviderUnavailable(
                f"{self.name}: no answer from {self.url} in {self.timeout:g}s reading {self.where}"
            ) from None

    def _get(self, name: str, version: str | None) -> SecretValue | None:
        import hvac
        from hvac import exceptions as vault

        if version is not None and not version.isdigit():
            return None  # KV versions are numbers: there is no such version
        token = self._environ.get("VAULT_TOKEN")
        if not token:
            raise ProviderUnavailable(f"{self.name}: no token: set VAULT_TOKEN in the agent's env")
        client = hvac.Client(
            url=self.url,
            token=token,
            namespace=self.namespace,
            timeout=(self.timeout / 2, self.timeout / 2),
        )
        try:
            answer = client.secrets.kv.v2.read_secret_version(
                path=self.path,
                version=int(version) if version is not None else None,
                mount_point=self.mount,
                raise_on_deleted_version=True,
            )
        except vault.InvalidPath:
            return None  # 404: no secret at path, or no such (or a deleted) version
        except vault.Forbidden:
            raise ProviderUnavailable(
                f"{self.name}: permission denied reading {self.where} (check VAULT_TOKEN and its "
                "policy)"
            ) from None
        except vault.VaultError as exc:
            # Sealed (503), 401, 500...: hvac's message is Vault's `errors`, which holds no value.
            raise ProviderUnavailable(
                f"{self.name}: {type(exc).__name__} reading {self.where}: {exc}"
            ) from None
        except OSError as exc:
            # requests' errors (refused, timed out) are OSErrors; hvac lets them through.
            raise ProviderUnavailable(
                f"{self.name}: no answer from {self.url} reading {self.where} "
                f"({type(exc).__name__})"
            ) from None
        return self._value(name, answer)

    def _value(self, name: str, answer: Any) -> SecretValue | None:
        try:
            data = answer["data"]["data"] or {}
            current = answer["data"]["metadata"]["version"]
        except (KeyError, TypeError):
            raise ProviderUnavailable(
                f"{self.name}: {self.where} is not a KV version 2 secret (is {self.mount} a KV v2 "
                "mount?)"
            ) from None
        if name not in data:
            return None
        value = data[name]
        if not isinstance(value, str):
            raise SecretError(
                f"{self.name}: {self.where} key {name} is not a string: store it as text"
            )
        return SecretValue(name=name, value=value, version=str(current), provider=self.name)
