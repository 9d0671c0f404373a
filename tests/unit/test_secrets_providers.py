"""The providers that need only this machine, for real: the environment, a dotenv file, a
command (a real program, with a real timeout and a real failure)."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import pytest

from conveyor.secrets.base import ProviderUnavailable
from conveyor.secrets.providers import CommandProvider, DotenvProvider, EnvProvider, quote_stderr

VALUE = "s3cr3t-value-with $dollar and 'quotes'"


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_env_reads_the_agents_own_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STRIPE_KEY", VALUE)
    found = run(EnvProvider().get("STRIPE_KEY"))
    assert (found.value, found.version, found.provider) == (VALUE, "current", "env")
    monkeypatch.delenv("STRIPE_KEY")
    assert run(EnvProvider().get("STRIPE_KEY")) is None


def test_dotenv_reads_its_file_at_each_lookup(tmp_path: Path) -> None:
    path = tmp_path / ".env.local"
    provider = DotenvProvider(path)
    with pytest.raises(ProviderUnavailable, match=r"\.env\.local does not exist"):
        run(provider.get("A"))
    path.write_text('A="first"\nB=2\nA="second"\n')
    assert run(provider.get("A")).value == "second"
    assert run(provider.get("C")) is None
    path.write_text("A=changed\n")
    assert run(provider.get("A")).value == "changed"
    path.write_text("A=1\nbroken line\n")
    with pytest.raises(ProviderUnavailable, match="line 2: expected NAME=value"):
        run(provider.get("A"))


def _script(tmp_path: Path, body: str) -> str:
    script = tmp_path / "vault-cli.py"
    script.write_text(body)
    return f"{sys.executable} {script} {{app}} {{environment}} {{name}}"


def test_a_command_prints_the_value(tmp_path: Path) -> None:
    body = (
        "import sys\n"
        "app, env, name = sys.argv[1:]\n"
        "if name == 'NOPE': sys.exit(0)\n"
        f"print(f'{{app}}/{{env}}/{{name}}:' + {VALUE!r})\n"
    )
    provider = CommandProvider(_script(tmp_path, body), "shop", "production", timeout=30)
    found = run(provider.get("STRIPE_KEY"))
    assert found.value == f"shop/production/STRIPE_KEY:{VALUE}"  # one trailing newline less
    assert (found.version, found.provider) == ("current", "command")
    assert run(provider.get("NOPE")) is None  # no output: it has no such name


def test_the_value_is_never_on_a_command_line(tmp_path: Path) -> None:
    provider = CommandProvider("op read 'op://shop/{name}/password'", "shop", "prod", 5)
    assert provider.argv("STRIPE_KEY") == ["op", "read", "op://shop/STRIPE_KEY/password"]
    assert provider.argv("A; rm -rf /") == ["op", "read", "op://shop/A; rm -rf //password"]


def test_a_failing_command_is_unavailable_with_its_last_words(tmp_path: Path) -> None:
    body = (
        "import sys\n"
        "print('debug noise', file=sys.stderr)\n"
        "print('[ERROR] not signed in\\x1b[31m', file=sys.stderr)\n"
        "sys.exit(3)\n"
    )
    provider = CommandProvider(_script(tmp_path, body), "shop", "production", timeout=30)
    with pytest.raises(ProviderUnavailable) as caught:
        run(provider.get("STRIPE_KEY"))
    assert str(caught.value).endswith("exited with code 3: [ERROR] not signed in?[31m")
    assert "debug noise" not in str(caught.value)


def test_a_missing_program_is_unavailable() -> None:
    provider = CommandProvider("/nonexistent/op read {name}", "shop", "dev", timeout=5)
    with pytest.raises(ProviderUnavailable, match="cannot run /nonexistent/op"):
        run(provider.get("A"))


def test_a_command_that_hangs_is_killed_with_its_children(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    body = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen(['sleep', '60'])\n"
        f"open({str(pidfile)!r}, 'w').write(str(child.pid))\n"
        "time.sleep(60)\n"
    )
    provider = CommandProvider(_script(tmp_path, body), "shop", "dev", timeout=1.5)
    started = time.monotonic()
    with pytest.raises(ProviderUnavailable, match=r"timed out after 1.5s \(killed\)"):
        run(provider.get("A"))
    assert time.monotonic() - started < 30
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 10
    while Path(f"/proc/{child}").exists() and time.monotonic() < deadline:
        stat = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()
        if stat[0] == "Z":
            break
        time.sleep(0.05)
    alive = Path(f"/proc/{child}/stat").exists() and (
        Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    )
    assert not alive


def test_stderr_is_quoted_short() -> None:
    assert quote_stderr(b"") == "(no output on stderr)"
    assert len(quote_stderr(b"x" * 1000)) == 200
