"""`conveyor render`: the manifests conveyor would apply, printed as YAML documents (read back
with PyYAML: the same objects kube/manifests.py builds), or one file per object; bad input is
exit 2 with the key."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conveyor.config import load_config
from conveyor.kube import manifests as m
from conveyor.kube.yaml import dump

CONFIG = """
[app]
name = "shop"
[runtime]
kind = "kubernetes"
namespace = "shop"
[router]
kind = "kubernetes"
[rollout]
analysis = [{ metric = "prometheus", query = "vector(0)", max = 1 }]
[services.web]
image = "registry.example/shop-web:1.4"
port = 80
container_port = 8000
env = { GREETING = "yes: it's \\"quoted\\"", EMPTY = "", NUMBER = "0123", BOOL = "true" }
"""


def conveyor(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CONVEYOR_PROJECT": str(cwd), "NO_COLOR": "1", "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "conveyor", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "conveyor.toml").write_text(CONFIG)
    return tmp_path


def test_render_prints_the_objects_as_yaml_documents(project: Path) -> None:
    out = conveyor(project, "render", "--env", "dev", "--version", "v7", "--color", "green")
    assert out.returncode == 0, out.stderr
    docs = [d for d in yaml.safe_load_all(out.stdout) if d is not None]
    expected = m.render(
        load_config(project / "conveyor.toml").environment("dev"), "v7", "green", "kubernetes"
    )
    assert docs == expected
    assert [(d["kind"], d["metadata"]["name"]) for d in docs] == [
        ("Deployment", "web-green"),
        ("Service", "web-green"),
        ("Service", "web"),
    ]
    env = {
        e["name"]: e.get("value")
        for e in docs[0]["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["GREETING"] == 'yes: it\'s "quoted"' and env["NUMBER"] == "0123"
    assert env["BOOL"] == "true" and env["EMPTY"] == ""


def test_render_writes_one_file_per_object_and_json(project: Path) -> None:
    out = conveyor(project, "render", "--env", "dev", "--version", "v7", "--output", "k8s")
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in (project / "k8s").iterdir()) == [
        "01-deployment-web-blue.yaml",
        "02-service-web-blue.yaml",
        "03-service-web.yaml",
    ]
    out = conveyor(project, "render", "--env", "dev", "--version", "v7", "--json")
    assert out.returncode == 0, out.stderr
    assert len(json.loads(out.stdout)["objects"]) == 3


def test_render_refuses_bad_input_with_exit_2(project: Path) -> None:
    out = conveyor(project, "render", "--env", "dev", "--version", "v7", "--color", "red")
    assert out.returncode == 2 and "--color must be blue or green" in out.stderr
    (project / "conveyor.toml").write_text(
        CONFIG.replace('image = "registry.example/shop-web:1.4"\n', 'command = "serve"\n')
    )
    out = conveyor(project, "render", "--env", "dev", "--version", "v7")
    assert out.returncode == 2
    assert "conveyor.toml: services.web.image is needed" in out.stderr
    out = conveyor(project, "render", "--env", "dev")
    assert out.returncode == 2 and "no release yet: pass --version" in out.stderr


def test_a_secret_is_rendered_with_its_key_names_only() -> None:
    spec = m.ColorSpec(
        "shop",
        "dev",
        "web",
        "blue",
        "v1",
        "shop",
        "img",
        None,
        True,
        env={"API_KEY": "abc-never-shown"},
        secrets=("API_KEY",),
    )
    text = "".join(dump(obj) for obj in m.color_objects(spec, None))
    assert "abc-never-shown" not in text
    assert "conveyor.dev/secret-keys: API_KEY" in text


@pytest.mark.parametrize(
    "value",
    [
        "plain",
        "",
        "0123",
        "1e3",
        "true",
        "No",
        "null",
        "~",
        "a: b",
        "- x",
        "#c",
        "{x}",
        "[1]",
        "it's",
        'q"q',
        "multi\nline",
        "*ref",
        "&anchor",
        "!tag",
        "%x",
        "@x",
        "`x",
        "ü",
        " lead",
        "trail ",
    ],
)
def test_yaml_scalars_read_back_as_the_same_string(value: str) -> None:
    assert yaml.safe_load(dump({"k": value, "l": [value, {"n": value}]})) == {
        "k": value,
        "l": [value, {"n": value}],
    }
