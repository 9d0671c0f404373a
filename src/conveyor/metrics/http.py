"""The `http` check: GET a URL; a 2xx passes, or the number at `field` in the JSON body is judged.

`fetch` is also the HTTP client of the Prometheus source. It is urllib run in a worker thread
(so http and https both work and the event loop never blocks), with proxies from the
environment ignored: analysis talks to the hosts in conveyor.toml and nowhere else.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from typing import TYPE_CHECKING

from conveyor.core.analysis import Measurement, Verdict, judge
from conveyor.metrics.base import MissingPlaceholder, Target, json_field, seconds, short, substitute

if TYPE_CHECKING:
    from conveyor.config.models import AnalysisCheck

MAX_BODY = 4 * 1024 * 1024
USER_AGENT = "conveyor-analysis"

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class FetchError(Exception):
    """The request got no HTTP answer; str() is a short reason for people."""


def _fetch_blocking(url: str, timeout: float) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            return int(response.status), response.read(MAX_BODY)
    except urllib.error.HTTPError as exc:
        # A non-2xx answer is still an answer (Prometheus explains bad queries in the body).
        with exc:
            return exc.code, exc.read(MAX_BODY)
    except TimeoutError as exc:
        raise FetchError(f"timed out after {seconds(timeout)}") from exc
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, TimeoutError):
            raise FetchError(f"timed out after {seconds(timeout)}") from exc
        if isinstance(reason, ConnectionRefusedError):
            raise FetchError("connection refused") from exc
        text = reason.strerror if isinstance(reason, OSError) and reason.strerror else reason
        raise FetchError(f"connection failed: {short(str(text))}") from exc
    except (OSError, ValueError) as exc:
        # ValueError: a URL urllib cannot use; OSError: reset mid-read and the like.
        raise FetchError(short(str(exc)) or type(exc).__name__) from exc


async def fetch(url: str, timeout: float) -> tuple[int, bytes]:
    """GET `url`: (status, body). Raises FetchError when there is no HTTP answer in `timeout`."""
    try:
        return await asyncio.wait_for(asyncio.to_thread(_fetch_blocking, url, timeout), timeout)
    except TimeoutError as exc:
        # The worker thread gives up on its own at the socket timeout.
        raise FetchError(f"timed out after {seconds(timeout)}") from exc


class HttpSource:
    """GET the check's URL. Without `field`: 2xx PASS, anything else (no answer too) FAIL.

    With `field`: a non-2xx answer or no answer FAILs, and the number at `field` in the
    JSON body is judged against min/max; a body without that number is INCONCLUSIVE.
    """

    async def measure(self, check: AnalysisCheck, target: Target, now: float) -> Measurement:
        name = check.display()
        if check.url is None:
            raise ValueError(f"check {name} has no url")
        try:
            url = substitute(check.url, target)
        except MissingPlaceholder as exc:
            return Measurement(name, Verdict.INCONCLUSIVE, None, str(exc), now)
        try:
            status, body = await fetch(url, check.timeout)
        except FetchError as exc:
            return Measurement(name, Verdict.FAIL, None, str(exc), now)
        ok = 200 <= status < 300
        if check.field is None or not ok:
            return Measurement(
                name, Verdict.PASS if ok else Verdict.FAIL, None, f"HTTP {status}", now
            )
        try:
            document = json.loads(body)
        except ValueError:
            return judge(check, None, None, "the response is not JSON", now)
        value, why = json_field(document, check.field)
        return judge(check, value, None, why, now)
