"""The `aws` provider: AWS Secrets Manager through boto3 (the `aws` extra).

A NAME is the secret `prefix + NAME` (prefix = "shop/production/" gives shop/production/STRIPE_KEY),
read with GetSecretValue, optionally at a VersionId. Its value is the secret's SecretString (or its
SecretBinary as UTF-8). Credentials come from boto3's usual chain in the agent's environment
(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, an instance or task role): never from
conveyor.toml. `endpoint_url` points it at LocalStack or moto.

Every call is bounded by `timeout` (the `[secrets] timeout`, 5s by default): botocore's connect
and read timeouts are half of it each, with one retry (a reset connection is worth a second try),
and the whole call is cut off at `timeout`, so an unreachable region costs one bounded wait and
the resolver moves on to the next provider.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import threading
from collections.abc import Mapping
from typing import Any

from conveyor.secrets.base import ProviderUnavailable, SecretError, SecretValue

KIND = "aws"
DEFAULT_TIMEOUT = 5.0
# One retry: a dropped connection is worth a second try, a dead endpoint is not worth five.
ATTEMPTS = 2
SETTINGS = ("region", "prefix", "endpoint_url", "profile")

# Error codes that mean "there is no such secret (or version)": the next provider may have it.
_ABSENT = {"ResourceNotFoundException"}
# Error codes with which the secret may exist but cannot be read now: the provider is unavailable.
_AUTH = {
    "AccessDeniedException",
    "UnrecognizedClientException",
    "InvalidSignatureException",
    "ExpiredTokenException",
    "InvalidClientTokenId",
    "SignatureDoesNotMatch",
}


class AwsProvider:
    """AWS Secrets Manager: one secret per NAME, under `prefix`, in `region`."""

    def __init__(
        self,
        *,
        region: str | None,
        prefix: str = "",
        endpoint_url: str | None = None,
        profile: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        name: str = KIND,
    ) -> None:
        self.name = name
        # None: boto3's own (AWS_REGION, AWS_DEFAULT_REGION, the profile's).
        self.region = region
        self.prefix = prefix
        self.endpoint_url = endpoint_url
        self.profile = profile
        self.timeout = timeout
        self._client: Any = None
        self._lock = threading.Lock()

    @classmethod
    def from_settings(
        cls, settings: Mapping[str, Any], timeout: float = DEFAULT_TIMEOUT, name: str = KIND
    ) -> AwsProvider:
        """From the `aws = { region = ..., prefix = ... }` table of conveyor.toml (a key set to
        None is unset). Raises SecretError naming a wrong key, ProviderUnavailable without boto3.
        """
        given = {key: value for key, value in settings.items() if value is not None}
        unknown = sorted(set(given) - set(SETTINGS))
        if unknown:
            raise SecretError(
                f"{name}: unknown setting {unknown[0]!r} (known: {', '.join(SETTINGS)})"
            )
        for key, value in given.items():
            if not isinstance(value, str):
                raise SecretError(f"{name}: {key} must be a string")
        endpoint_url = given.get("endpoint_url")
        if endpoint_url is not None and not endpoint_url.startswith(("http://", "https://")):
            raise SecretError(f"{name}: endpoint_url must be an http:// or https:// URL")
        if timeout <= 0:
            raise SecretError(f"{name}: timeout must be greater than 0")
        if importlib.util.find_spec("boto3") is None:
            raise ProviderUnavailable(f"{name}: boto3 is not installed (conveyor-deploy[aws])")
        return cls(
            region=given.get("region"),
            prefix=given.get("prefix", ""),
            endpoint_url=endpoint_url,
            profile=given.get("profile"),
            timeout=timeout,
            name=name,
        )

    def secret_id(self, name: str) -> str:
        return self.prefix + name

    async def get(self, name: str, version: str | None = None) -> SecretValue | None:
        # Making the client is local work (no request is sent): outside the deadline, which is
        # about waiting on AWS. Errors in it (an unknown profile) come out of _get below.
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self.client)
        # The thread is not interrupted at the deadline: botocore's own timeouts end it soon after.
        call = asyncio.to_thread(self._get, name, version)
        try:
            return await asyncio.wait_for(call, self.timeout)
        except TimeoutError:
            raise ProviderUnavailable(
                f"{self.name}: no answer from Secrets Manager in {self.timeout:g}s "
                f"reading {self.secret_id(name)}"
            ) from None

    def _get(self, name: str, version: str | None) -> SecretValue | None:
        from botocore.exceptions import BotoCoreError, ClientError, ParamValidationError

        secret_id = self.secret_id(name)
        request: dict[str, str] = {"SecretId": secret_id}
        if version is not None:
            request["VersionId"] = version
        try:
            answer = self.client().get_secret_value(**request)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in _ABSENT or _marked_for_deletion(exc):
                return None
            reason = "access denied" if code in _AUTH else f"error {code or 'unknown'}"
            raise ProviderUnavailable(f"{self.name}: {reason} reading {secret_id}") from None
        except ParamValidationError:
            # A name or VersionId AWS cannot hold (too long, bad characters): it has no such one.
            return None
        except BotoCoreError as exc:
            # Connection refused, timeouts, no credentials, a region with no endpoint. The text is
            # botocore's and holds no value (nothing was read).
            raise ProviderUnavailable(f"{self.name}: {exc} (reading {secret_id})") from None
        value = answer.get("SecretString")
        if value is None:
            binary = answer.get("SecretBinary", b"")
            try:
                value = bytes(binary).decode("utf-8")
            except UnicodeDecodeError:
                raise SecretError(
                    f"{self.name}: {secret_id} is binary, not UTF-8 text: store it as a string"
                ) from None
        return SecretValue(
            name=name, value=value, version=str(answer.get("VersionId", "")), provider=self.name
        )

    def client(self) -> Any:
        # Made once per provider and shared by its threads (a botocore client is thread-safe);
        # a fresh session each, so credentials are read as they are now, not as another provider
        # once found them.
        with self._lock:
            if self._client is None:
                import boto3
                import botocore.session
                from botocore.config import Config

                config = Config(
                    connect_timeout=self.timeout / 2,
                    read_timeout=self.timeout / 2,
                    retries={"max_attempts": ATTEMPTS, "mode": "standard"},
                )
                core = botocore.session.get_session()
                core.register_component("data_loader", _loader())
                session = boto3.session.Session(botocore_session=core, profile_name=self.profile)
                self._client = session.client(
                    "secretsmanager",
                    region_name=self.region,
                    endpoint_url=self.endpoint_url,
                    config=config,
                )
            return self._client


_shared_loader: Any = None
_loader_lock = threading.Lock()


def _loader() -> Any:
    """One botocore data loader for every provider: it caches the parsed service models, which
    makes a client in ~50 ms instead of ~200 ms of parsing JSON (holding the GIL meanwhile)."""
    global _shared_loader
    with _loader_lock:
        if _shared_loader is None:
            import botocore.loaders

            _shared_loader = botocore.loaders.create_loader()
        return _shared_loader


def _marked_for_deletion(exc: Any) -> bool:
    # A secret scheduled for deletion answers InvalidRequestException: it is gone for our purpose.
    error = exc.response.get("Error", {})
    return bool(
        error.get("Code") == "InvalidRequestException"
        and "delet" in str(error.get("Message", "")).lower()
    )
