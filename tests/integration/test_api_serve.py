"""`conveyor serve` itself: loopback by default, refusing other addresses without TLS, HTTPS
with a certificate made here, the Secure session cookie under TLS, a clean stop on SIGTERM."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import urllib.request
from pathlib import Path

from apikit import serve, token
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from conftest import Project


def self_signed(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


def test_refuses_a_public_address_without_tls(project: Project) -> None:
    project.configure()
    proc = project.cli("serve", "--host", "0.0.0.0", "--port", "0", timeout=60)
    assert proc.returncode == 2
    assert "refusing to listen on 0.0.0.0 without TLS" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    proc = project.cli("serve", "--tls-cert", "cert.pem", timeout=60)
    assert proc.returncode == 2 and "both --tls-cert and --tls-key" in proc.stderr
    proc = project.cli("serve", "--tls-cert", "nope.pem", "--tls-key", "nope.key", timeout=60)
    assert proc.returncode == 2 and "nope.pem" in proc.stderr
    help_text = project.cli("serve", "--help").stdout
    assert "Example:" in help_text and "conveyor serve --port 8400" in help_text


def test_https_with_a_self_signed_certificate(project: Project) -> None:
    project.configure()
    cert, key = self_signed(project.dir)
    _, admin_tok = token(project, "ann", "admin")
    with serve(project, "--tls-cert", str(cert), "--tls-key", str(key)) as served:
        assert served.url.startswith("https://127.0.0.1:")
        served.verify = ssl.create_default_context(cafile=str(cert))
        me = served.client(admin_tok).get("/api/v1/me")
        assert me.status_code == 200 and me.json()["subject"] == "ann"
        browser = served.client(follow_redirects=False)
        r = browser.post("/login", data={"token": admin_tok})
        assert r.status_code == 303 and "secure" in r.headers["set-cookie"].lower()


def test_ctrl_c_stops_it_cleanly(project: Project) -> None:
    project.configure()
    with serve(project) as served:
        assert served.client().get("/api/v1/openapi.json").status_code == 200
        served.proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        assert served.proc.wait(timeout=30) == 0
        assert "conveyor serve stopped" in served.lines.get(timeout=10)


def test_install_unit_writes_a_unit_whose_command_serves(project: Project, tmp_path: Path) -> None:
    """`serve --install-unit`: systemd restarts the server whenever it ends (there is no systemd
    here to crash it under, so the unit's own command line is run and must serve)."""
    project.configure()
    cert, key = self_signed(project.dir)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = ["--port", str(port), "--keepalive", "0.3s", "--tls-cert", "cert.pem"]
    printed = project.cli("serve", *args, "--tls-key", "key.pem", "--install-unit", "--print-unit")
    assert printed.returncode == 0, printed.stderr
    unit = dict(
        line.split("=", 1)
        for line in printed.stdout.splitlines()
        if "=" in line and "#" not in line
    )
    assert unit["Restart"] == "always" and unit["StartLimitIntervalSec"] == "0"
    assert unit["KillSignal"] == "SIGTERM"
    command = shlex.split(unit["ExecStart"].replace("%%", "%"))
    assert command[1:4] == ["-m", "conveyor", "serve"]
    assert str(cert.resolve()) in command and str(key.resolve()) in command  # not relative
    unit_file = tmp_path / "conveyor-shop-serve.service"
    unit_file.write_text(printed.stdout)
    if shutil.which("systemd-analyze"):
        check = subprocess.run(
            ["systemd-analyze", "verify", "--man=no", str(unit_file)],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "SYSTEMD_LOG_LEVEL": "notice"},
        )
        problems = [x for x in (check.stdout + check.stderr).splitlines() if unit_file.name in x]
        assert not problems, check.stdout + check.stderr
    # What systemd would run, run here (from elsewhere: the unit names its directory).
    proc = subprocess.Popen(
        command,
        cwd=unit["WorkingDirectory"].strip('"'),
        env=project.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        assert f"https://127.0.0.1:{port}" in proc.stdout.readline()
        _, admin_tok = token(project, "ann", "admin")
        ctx = ssl.create_default_context(cafile=str(cert))
        request = urllib.request.Request(
            f"https://127.0.0.1:{port}/api/v1/me", headers={"Authorization": f"Bearer {admin_tok}"}
        )
        with urllib.request.urlopen(request, timeout=30, context=ctx) as resp:
            assert resp.status == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0

    # Written where systemd looks for a user's units, with the next steps; nothing on bad input.
    home = tmp_path / "home"
    env = {**project.env, "HOME": str(home)}

    def serve_as_home(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "conveyor", "serve", *args],
            env=env,
            cwd=project.dir,
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )

    wrote = serve_as_home("--install-unit", "--user")
    assert wrote.returncode == 0, wrote.stderr
    [written] = (home / ".config" / "systemd" / "user").iterdir()
    assert written.name.endswith("-serve.service") and "--port 8400" in written.read_text()
    assert "systemctl --user enable --now" in wrote.stdout and written.name in wrote.stdout
    for bad, says in [
        (["--print-unit"], "go with --install-unit"),
        (["--install-unit", "--user", "--host", "0.0.0.0"], "without TLS"),
    ]:
        written.unlink(missing_ok=True)
        refused = serve_as_home(*bad)
        assert refused.returncode == 2 and says in refused.stderr, refused.stderr
        assert not written.exists()
