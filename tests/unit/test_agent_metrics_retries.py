"""The agent's /metrics shows the proxy's retries on the standby, by reason (pure rendering)."""

from __future__ import annotations

from conveyor.agent.metrics import RETRY_REASONS, render
from conveyor.proxy.model import RETRY_REASONS as PROXY_REASONS


def test_retries_are_a_counter_by_reason_on_the_color_that_failed() -> None:
    stats = {
        "routes": {
            "dev/web": {
                "colors": {
                    "green": {
                        "requests": 5,
                        "upstream_errors": 3,
                        "retries": {"refused": 2, "reset": 1},
                    },
                    "blue": {"requests": 3},  # a proxy from before retries: zeros, not gaps
                }
            }
        }
    }
    text = render(stats, {("dev/web", "green"): "v2", ("dev/web", "blue"): "v1"})
    lines = text.splitlines()
    assert "# TYPE conveyor_proxy_retries_total counter" in lines
    green = 'environment="dev",service="web",color="green",version="v2"'
    blue = 'environment="dev",service="web",color="blue",version="v1"'
    assert f'conveyor_proxy_retries_total{{{green},reason="refused"}} 2' in lines
    assert f'conveyor_proxy_retries_total{{{green},reason="reset"}} 1' in lines
    assert f'conveyor_proxy_retries_total{{{blue},reason="refused"}} 0' in lines
    assert f'conveyor_proxy_retries_total{{{blue},reason="reset"}} 0' in lines
    assert f"conveyor_proxy_upstream_errors_total{{{green}}} 3" in lines


def test_the_agent_knows_every_reason_the_proxy_counts() -> None:
    # The agent does not import the proxy (its own process): the two lists must agree.
    assert RETRY_REASONS == PROXY_REASONS
