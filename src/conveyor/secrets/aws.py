"""The `aws` provider: AWS Secrets Manager through boto3 (the `aws` extra).

A NAME is the secret `prefix + NAME` (prefix = "shop/production/" gives shop/production/STRIPE_KEY),
read with GetSecretValue, optionally at a VersionId. Its value is the secret's SecretString (or its
SecretBinary as UTF-8). Credentials come from boto3's usual chain in the agent's environment
(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, an instance or task role): never from
conveyor.toml. `endpoint_url` points it at LocalStack or moto.

Every call is bounded: botocore's connect and read timeouts and its retries are set from
`timeout`, and the whole call is cut off at a deadline derived from them, so an unreachable region
costs one bounded wait and the resolver moves on to the next provider.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping
from typing import Any

from conveyor.secrets.base import ProviderUnavailable, SecretError, SecretValue

KIND = "aws"
DEFAULT_TIMEOUT = 5.0
# One retry: a dropped connection is worth a second try, a dead endpoint is not worth five.
ATTEMPTS = 2
SETTINGS = ("region", "prefix", "endpoint_url", "timeout")

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
        region: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        name: str = KIND,
    ) -> None:
        self.name = name
        self.region = region
        self.prefix = prefix
        self.endpoint_url = endpoint_url
        self.timeout = timeout
        self._client: Any = None
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], name: str = KIND) -> AwsProvider:
        """From the `aws = { region = ..., prefix = ... }` table of conveyor.toml.

        Raises SecretError naming the key that is wrong.
        """
        unknown = sorted(set(settings) - set(SETTINGS))
        if unknown:
            raise SecretError(
                f"{name}: unknown setting {unknown[0]!r} (known: {', '.join(SETTINGS)})"
            )
        region = settings.get("region")
        if not isinstance(region, str) or not region:
            raise SecretError(f'{name}: region is required, e.g. region = "eu-west-1"')
        prefix = settings.get("prefix", "")
        endpoint_url = settings.get("endpoint_url")
        timeout = settings.get("timeout", DEFAULT_TIMEOUT)
        if not isinstance(prefix, str):
            raise SecretError(f"{name}: prefix must be a string")
        if endpoint_url is not None and not (
            isinstance(endpoint_url, str) and endpoint_url.startswith(("http://", "https://"))
        ):
            raise SecretError(f"{name}: endpoint_url must be an http:// or https:// URL")
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            raise SecretError(f"{name}: timeout must be a number of seconds greater than 0")
        return cls(
            region=region,
            prefix=prefix,
            endpoint_url=endpoint_url,
            timeout=float(timeout),
            name=name,
        )

    def secret_id(self, name: str) -> str:
        return self.prefix + name

    @property
    def deadline(self) -> float:
        """The longest a get may take: every attempt's connect and read, and a margin."""
        return ATTEMPTS * 2 * self.timeout + 1.0

    async def get(self, name: str, version: str | None = None) -> SecretValue | None:
        call = asyncio.to_thread(self._get, name, version)
        try:
            return await asyncio.wait_for(call, self.deadline)
        except TimeoutError:
            raise ProviderUnavailable(
                f"{self.name}: no answer from Secrets Manager in {self.deadline:g}s "
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
        # Made once and shared by the threads: a botocore client is thread-safe, making one is not
        # cheap (~100 ms), and a session is not thread-safe, hence the lock.
        with self._lock:
            if self._client is None:
                import boto3
                from botocore.config import Config

                config = Config(
                    connect_timeout=self.timeout,
                    read_timeout=self.timeout,
                    retries={"max_attempts": ATTEMPTS, "mode": "standard"},
                )
                self._client = boto3.session.Session().client(
                    "secretsmanager",
                    region_name=self.region,
                    endpoint_url=self.endpoint_url,
                    config=config,
                )
            return self._client


def _marked_for_deletion(exc: Any) -> bool:
    # A secret scheduled for deletion answers InvalidRequestException: it is gone for our purpose.
    error = exc.response.get("Error", {})
    return bool(
        error.get("Code") == "InvalidRequestException"
        and "delet" in str(error.get("Message", "")).lower()
    )
