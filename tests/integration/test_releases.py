"""ReleaseStore against real git repositories and directories."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import subprocess
import tarfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from conveyor.releases import ReleaseError, ReleaseStore, tree_digest
from conveyor.store import ReleaseRecord, Store
from conveyor.store.facts import FactStore

NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
GIT_ENV = {
    **os.environ,
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_AUTHOR_NAME": "test",
    "GIT_AUTHOR_EMAIL": "test@example.com",
    "GIT_COMMITTER_NAME": "test",
    "GIT_COMMITTER_EMAIL": "test@example.com",
}


def git(repo: Path, *args: str) -> str:
    result = subprocess.run(
        ["git", "-C", str(repo), *args], env=GIT_ENV, capture_output=True, text=True, check=True
    )
    return result.stdout.strip()


def write(root: Path, files: dict[str, str]) -> None:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)


def listing(root: Path) -> dict[str, str]:
    """Every file and symlink under root: name -> content (or "-> target")."""
    found: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        name = path.relative_to(root).as_posix()
        if path.is_symlink():
            found[name] = "-> " + os.readlink(path)
        elif path.is_file():
            found[name] = path.read_text()
    return found


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store.open(f"sqlite:///{tmp_path}/home/state.db")
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def releases(tmp_path: Path, store: Store) -> ReleaseStore:
    return ReleaseStore(tmp_path / "home", store, "shop")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    git(root, "init", "-q")
    write(root, {"app.py": "print('v1')\n", "lib/util.py": "X = 1\n", "README": "hi\n"})
    (root / "run.sh").write_text("#!/bin/sh\nexec python app.py\n")
    (root / "run.sh").chmod(0o755)
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "first")
    return root


# git sources


def test_git_release_is_head_not_the_work_tree(releases: ReleaseStore, repo: Path) -> None:
    (repo / "uncommitted.txt").write_text("not released\n")
    (repo / "app.py").write_text("print('edited, not committed')\n")
    head = git(repo, "rev-parse", "HEAD")

    rec = releases.create(repo, None, NOW).record

    assert rec.commit == head and len(head) == 40
    assert rec.version == head[:12]
    assert rec.app == "shop" and rec.created_at == NOW
    tree = releases.tree(rec)
    assert listing(tree) == {
        "README": "hi\n",
        "app.py": "print('v1')\n",
        "lib/util.py": "X = 1\n",
        "run.sh": "#!/bin/sh\nexec python app.py\n",
    }
    assert os.access(tree / "run.sh", os.X_OK)
    assert not os.access(tree / "app.py", os.X_OK)
    assert releases.store.get_release("shop", rec.version) == rec


def test_git_release_of_a_subdirectory(releases: ReleaseStore, repo: Path) -> None:
    write(repo, {"services/api/main.py": "api\n", "services/api/conf/a.toml": "x = 1\n"})
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "api")

    rec = releases.create(repo / "services" / "api", "api-1", NOW).record

    assert rec.commit == git(repo, "rev-parse", "HEAD")
    assert listing(releases.tree(rec)) == {"conf/a.toml": "x = 1\n", "main.py": "api\n"}


def test_git_release_skips_committed_virtualenvs_and_caches(
    releases: ReleaseStore, repo: Path
) -> None:
    write(
        repo,
        {
            "env/pyvenv.cfg": "home = /usr\n",
            "env/lib/site.py": "",
            "__pycache__/app.cpython-311.pyc": "",
            "node_modules/left-pad/index.js": "pad\n",
        },
    )
    git(repo, "add", "-f", ".")
    git(repo, "commit", "-q", "-m", "oops")

    rec = releases.create(repo, "v1", NOW).record

    names = set(listing(releases.tree(rec)))
    assert names == {"README", "app.py", "lib/util.py", "run.sh", "node_modules/left-pad/index.js"}


def test_git_repository_without_commits(releases: ReleaseStore, tmp_path: Path) -> None:
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    git(fresh, "init", "-q")
    write(fresh, {"app.py": "x\n"})
    with pytest.raises(ReleaseError, match="without any commit"):
        releases.create(fresh, None, NOW)


def test_git_subdirectory_with_nothing_committed(releases: ReleaseStore, repo: Path) -> None:
    write(repo, {"new/app.py": "x\n"})
    with pytest.raises(ReleaseError, match="nothing committed under"):
        releases.create(repo / "new", "v1", NOW)


# directory sources


def test_directory_release_skips_state_and_virtualenvs(
    releases: ReleaseStore, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    write(
        src,
        {
            "app.py": "app\n",
            "pkg/mod.py": "mod\n",
            "pkg/__pycache__/mod.cpython-311.pyc": "bytecode",
            ".venv/lib/site.py": "",
            "venv/bin/python": "",
            "myenv/pyvenv.cfg": "home = /usr\n",
            "myenv/lib/x.py": "",
            ".conveyor/state.db": "",
            ".git/HEAD": "not a real repo\n",
            "node_modules/left-pad/index.js": "pad\n",
        },
    )
    (src / "empty-dir").mkdir()

    rec = releases.create(src, None, NOW).record

    assert rec.commit is None
    assert rec.version == "20240501-120000"
    tree = releases.tree(rec)
    assert listing(tree) == {
        "app.py": "app\n",
        "node_modules/left-pad/index.js": "pad\n",
        "pkg/mod.py": "mod\n",
    }
    assert (tree / "empty-dir").is_dir()


def test_home_inside_the_source_is_left_out(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "src"
    write(src, {"app.py": "app\n"})
    releases = ReleaseStore(src / "state", store, "shop")
    write(src / "state", {"notes.txt": "private\n"})

    rec = releases.create(src, "v1", NOW).record

    assert listing(releases.tree(rec)) == {"app.py": "app\n"}


def test_directory_release_leaves_secrets_out_and_names_them(
    releases: ReleaseStore, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    write(
        src,
        {
            "app.py": "app\n",
            ".env": "SECRET=1\n",
            ".env.production": "SECRET=2\n",
            "config/.env.local": "SECRET=3\n",
            "certs/server.pem": "key\n",
            "certs/server.crt": "public\n",
            "deploy/id_ed25519": "key\n",
            ".ssh/config": "Host x\n",
            ".netrc": "machine x password y\n",
            "envelope.py": "not a secret\n",
        },
    )

    new = releases.create(src, "v1", NOW)

    assert listing(releases.tree(new.record)) == {
        "app.py": "app\n",
        "certs/server.crt": "public\n",
        "envelope.py": "not a secret\n",
    }
    assert new.left_out == (
        ".env",
        ".env.production",
        ".netrc",
        ".ssh/",
        "certs/server.pem",
        "config/.env.local",
        "deploy/id_ed25519",
    )


def test_conveyorignore_leaves_out_more_and_can_take_a_default_back(
    releases: ReleaseStore, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    write(
        src,
        {
            "app.py": "app\n",
            ".env": "SECRET=1\n",
            ".env.example": "SECRET=\n",
            "docs/big.pdf": "pdf\n",
            "docs/index.md": "docs\n",
            "data/cache/x.bin": "x\n",
            ".conveyorignore": "# gitignore syntax\n*.pdf\n/data/\n!.env.example\n",
        },
    )

    new = releases.create(src, "v1", NOW)

    assert listing(releases.tree(new.record)) == {
        ".conveyorignore": "# gitignore syntax\n*.pdf\n/data/\n!.env.example\n",
        ".env.example": "SECRET=\n",
        "app.py": "app\n",
        "docs/index.md": "docs\n",
    }
    assert new.left_out == (".env", "data/", "docs/big.pdf")


def test_git_release_keeps_committed_files_but_follows_conveyorignore(
    releases: ReleaseStore, repo: Path
) -> None:
    # Committed on purpose: git says what to ship, so only .conveyorignore leaves things out.
    write(repo, {".env.example": "X=\n", "notes/todo.txt": "todo\n", ".conveyorignore": "notes/\n"})
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "more")

    new = releases.create(repo, "v2", NOW)

    names = listing(releases.tree(new.record))
    assert ".env.example" in names and "notes/todo.txt" not in names
    assert new.left_out == ("notes/",)


def test_git_release_lists_uncommitted_changes(releases: ReleaseStore, repo: Path) -> None:
    first = releases.create(repo, "v1", NOW)
    assert first.uncommitted == () and first.same_content_as == ()
    write(repo, {"app.py": "print('edited')\n", "new.py": "x\n", "conveyor.toml": "[app]\n"})
    (repo / "README").unlink()
    (repo / ".conveyor").mkdir()
    (repo / ".conveyor" / "state.db").write_text("")

    second = releases.create(repo, "v2", NOW)

    assert sorted(second.uncommitted) == [
        ("README", "deleted"),
        ("app.py", "modified"),
        ("new.py", "untracked"),
    ]
    assert second.same_content_as == ("v1",)
    assert releases.create(repo, "v3", NOW).same_content_as == ("v1", "v2")


def test_uncommitted_changes_of_a_subdirectory_are_relative_to_it(
    releases: ReleaseStore, repo: Path
) -> None:
    write(repo, {"lib/util.py": "X = 2\n", "app.py": "print('outside')\n"})
    new = releases.create(repo / "lib", "lib-1", NOW)
    assert new.uncommitted == (("util.py", "modified"),)


def test_empty_sources_are_refused(releases: ReleaseStore, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    with pytest.raises(ReleaseError, match="nothing to release"):
        releases.create(empty, "v1", NOW)
    write(empty, {".venv/lib/site.py": "", "__pycache__/x.pyc": ""})
    with pytest.raises(ReleaseError, match="nothing to release"):
        releases.create(empty, "v1", NOW)
    with pytest.raises(ReleaseError, match="not a directory"):
        releases.create(tmp_path / "missing", "v1", NOW)
    assert releases.store.list_releases("shop") == []


# the archive


def test_same_content_same_digest_whatever_the_mtimes(
    releases: ReleaseStore, tmp_path: Path
) -> None:
    files = {"b.txt": "b\n", "a/z.txt": "z\n", "a/y.txt": "y\n"}
    first, second = tmp_path / "one", tmp_path / "two"
    write(first, files)
    write(second, dict(reversed(files.items())))  # created in another order
    for path in second.rglob("*"):
        os.utime(path, (1_000_000, 1_000_000))
    (second / "b.txt").chmod(0o600)  # permission bits other than x do not matter

    one = releases.create(first, "one", NOW).record
    one_bytes = releases.object_path(one).read_bytes()
    two = releases.create(second, "two", NOW).record

    assert one.digest == two.digest
    assert releases.object_path(two).read_bytes() == one_bytes
    assert one.size == two.size == len(one_bytes)
    assert [p.name for p in releases.objects.iterdir()] == [f"{one.digest}.tar.gz"]

    (second / "b.txt").write_text("changed\n")
    three = releases.create(second, "three", NOW).record
    assert three.digest != one.digest


def test_archive_is_normalised_and_digest_is_of_the_tar(releases: ReleaseStore, repo: Path) -> None:
    rec = releases.create(repo, "v1", NOW).record
    raw = releases.object_path(rec).read_bytes()
    tar_bytes = gzip.decompress(raw)

    assert rec.digest == "sha256-" + hashlib.sha256(tar_bytes).hexdigest()
    assert raw[4:8] == b"\0\0\0\0"  # gzip header mtime
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == sorted(m.name for m in members)
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname) for m in members} == {(0, 0, 0, "", "")}
    modes = {m.name: m.mode for m in members}
    assert modes["run.sh"] == 0o755 and modes["app.py"] == 0o644 and modes["lib"] == 0o755


# versions


def test_versions_are_immutable(releases: ReleaseStore, tmp_path: Path) -> None:
    src = tmp_path / "src"
    write(src, {"app.py": "one\n"})
    first = releases.create(src, "v1", NOW).record
    (src / "app.py").write_text("two\n")

    with pytest.raises(ReleaseError, match=rf"release v1 already exists \(digest {first.digest}\)"):
        releases.create(src, "v1", NOW)

    assert releases.store.list_releases("shop") == [first]
    assert listing(releases.tree(first)) == {"app.py": "one\n"}


def test_same_commit_twice_needs_a_new_version(releases: ReleaseStore, repo: Path) -> None:
    releases.create(repo, None, NOW)
    with pytest.raises(ReleaseError, match="already exists"):
        releases.create(repo, None, NOW)


@pytest.mark.parametrize("version", ["", "-1", ".hidden", "a b", "v1/2", "x" * 65, "é"])
def test_invalid_versions(releases: ReleaseStore, repo: Path, version: str) -> None:
    with pytest.raises(ReleaseError, match="invalid release version"):
        releases.create(repo, version, NOW)


def test_valid_unusual_version(releases: ReleaseStore, repo: Path) -> None:
    version = "1.0.0+build_3-rc" + "x" * 48
    assert releases.create(repo, version, NOW).record.version == version


# symlinks


def test_symlinks_inside_the_tree_are_kept(releases: ReleaseStore, tmp_path: Path) -> None:
    src = tmp_path / "src"
    write(src, {"conf/real.toml": "x = 1\n", "app.py": "app\n"})
    (src / "current.toml").symlink_to("conf/real.toml")
    (src / "conf" / "self").symlink_to("../conf")
    (src / "dangling").symlink_to("not-there")

    tree = releases.tree(releases.create(src, "v1", NOW).record)

    assert os.readlink(tree / "current.toml") == "conf/real.toml"
    assert (tree / "current.toml").read_text() == "x = 1\n"
    assert (tree / "conf" / "self" / "real.toml").read_text() == "x = 1\n"
    assert os.readlink(tree / "dangling") == "not-there"


@pytest.mark.parametrize(
    ("links", "bad"),
    [
        ({"out": "../secret"}, "out"),
        ({"abs": "/etc/passwd"}, "abs"),
        ({"sub/deep": "../../secret"}, "sub/deep"),
        # Each link alone stays inside; followed through each other they escape.
        ({"up": "sub/..", "sub/parent": "..", "sneaky": "sub/parent/../secret"}, "sneaky"),
    ],
)
def test_symlinks_out_of_the_tree_are_refused(
    releases: ReleaseStore, tmp_path: Path, links: dict[str, str], bad: str
) -> None:
    src = tmp_path / "src"
    write(src, {"app.py": "app\n", "sub/x": "x\n"})
    write(tmp_path, {"secret": "s\n"})
    for name, target in links.items():
        (src / name).symlink_to(target)
    with pytest.raises(ReleaseError, match=f"symlink {bad} -> .* points outside"):
        releases.create(src, "v1", NOW)
    assert releases.store.list_releases("shop") == []


def test_symlink_escaping_in_git_is_refused(releases: ReleaseStore, repo: Path) -> None:
    (repo / "link").symlink_to("../../outside")
    git(repo, "add", "link")
    git(repo, "commit", "-q", "-m", "link")
    with pytest.raises(ReleaseError, match=r"symlink link -> \.\./\.\./outside points outside"):
        releases.create(repo, None, NOW)


# trees


def test_tree_is_extracted_once(releases: ReleaseStore, repo: Path) -> None:
    rec = releases.create(repo, "v1", NOW).record
    tree = releases.tree(rec)
    assert tree == releases.home / "releases" / "trees" / rec.digest
    (tree / "marker").write_text("still here\n")
    releases.object_path(rec).unlink()  # not needed any more once extracted

    assert releases.tree(rec) == tree
    assert (tree / "marker").read_text() == "still here\n"
    assert [p.name for p in tree.parent.iterdir()] == [rec.digest]


def test_missing_archive(releases: ReleaseStore, repo: Path) -> None:
    rec = releases.create(repo, "v1", NOW).record
    path = releases.object_path(rec)
    path.unlink()
    with pytest.raises(ReleaseError, match=f"archive {path} is missing"):
        releases.tree(rec)


def test_corrupt_archive(releases: ReleaseStore, repo: Path) -> None:
    rec = releases.create(repo, "v1", NOW).record
    path = releases.object_path(rec)
    data = bytearray(path.read_bytes())
    path.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(ReleaseError, match=f"archive {path} is corrupt"):
        releases.tree(rec)
    assert list(releases.trees.iterdir()) == []


def _tar_bytes(info: tarfile.TarInfo, data: bytes | None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        if data is None:
            tar.addfile(info)
        else:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _store_object(releases: ReleaseStore, tar_bytes: bytes) -> str:
    digest = "sha256-" + hashlib.sha256(tar_bytes).hexdigest()
    releases.objects.mkdir(parents=True, exist_ok=True)
    (releases.objects / f"{digest}.tar.gz").write_bytes(gzip.compress(tar_bytes))
    return digest


def _record(digest: str) -> ReleaseRecord:
    return ReleaseRecord("shop", "v1", None, digest, 0, NOW)


def test_tampered_archive_fails_digest_check(releases: ReleaseStore, repo: Path) -> None:
    rec = releases.create(repo, "v1", NOW).record
    evil = _tar_bytes(tarfile.TarInfo("app.py"), b"evil")
    releases.object_path(rec).write_bytes(gzip.compress(evil))

    with pytest.raises(ReleaseError, match="is corrupt: its content has digest"):
        releases.tree(rec)
    assert list(releases.trees.iterdir()) == []


@pytest.mark.parametrize(
    "member",
    [
        ("file", "../evil.txt", ""),
        ("symlink", "escape", "../../.."),
        ("symlink", "abs", "/etc"),
    ],
)
def test_tree_refuses_path_traversal(
    releases: ReleaseStore, tmp_path: Path, member: tuple[str, str, str]
) -> None:
    kind, name, target = member
    info = tarfile.TarInfo(name)
    if kind == "symlink":
        info.type = tarfile.SYMTYPE
        info.linkname = target
    digest = _store_object(releases, _tar_bytes(info, None if kind == "symlink" else b"evil"))

    with pytest.raises(ReleaseError, match="unsafe member"):
        releases.tree(_record(digest))

    assert not (releases.trees.parent / "evil.txt").exists()
    assert list(releases.trees.iterdir()) == []


def test_invalid_digest_is_refused(releases: ReleaseStore) -> None:
    with pytest.raises(ReleaseError, match="invalid digest"):
        releases.tree(_record("sha256-../../etc"))


# tags, and a release modified on disk (the promotion gates' part)


def test_release_records_the_tags_pointing_at_head(
    releases: ReleaseStore, store: Store, repo: Path
) -> None:
    git(repo, "tag", "v1.0.0")
    git(repo, "tag", "-a", "-m", "annotated", "stable")
    new = releases.create(repo, "v1", NOW)
    assert new.tags == ("stable", "v1.0.0")
    assert FactStore(store).tags("shop", "v1") == ("stable", "v1.0.0")
    write(repo, {"app.py": "print('v2')\n"})
    git(repo, "commit", "-q", "-am", "second")
    assert releases.create(repo, "v2", NOW).tags == ()
    assert FactStore(store).tags("shop", "v2") == ()


def test_an_extracted_tree_has_the_release_digest(
    releases: ReleaseStore, repo: Path, tmp_path: Path
) -> None:
    (repo / "empty").mkdir()
    os.symlink("lib/util.py", repo / "link.py")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "link")
    from_git = releases.create(repo, "v1", NOW).record
    plain = tmp_path / "plain"
    write(plain, {"a.py": "A\n", "sub/b.txt": "B\n"})
    (plain / "sub" / "empty").mkdir()
    (plain / "tool").write_text("#!/bin/sh\n")
    (plain / "tool").chmod(0o755)
    from_dir = releases.create(plain, "v2", NOW).record
    for rec in (from_git, from_dir):
        tree = releases.tree(rec)
        assert tree_digest(tree) == rec.digest
        # What running the app writes beside its sources is not content.
        (tree / "__pycache__").mkdir(exist_ok=True)
        (tree / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"\0")
        releases.verify(rec)


@pytest.mark.parametrize(
    "tamper",
    ["edit", "add", "remove", "chmod"],
)
def test_a_tree_modified_on_disk_is_refused(
    releases: ReleaseStore, repo: Path, tamper: str
) -> None:
    rec = releases.create(repo, "v1", NOW).record
    tree = releases.tree(rec)
    releases.verify(rec)
    if tamper == "edit":
        (tree / "app.py").write_text("print('evil')\n")
    elif tamper == "add":
        (tree / "sitecustomize.py").write_text("import evil\n")
    elif tamper == "remove":
        (tree / "README").unlink()
    else:
        (tree / "app.py").chmod(0o755)
    with pytest.raises(
        ReleaseError,
        match=r"release v1 was modified on disk and is refused: "
        r"its files in .* have digest sha256-\w+, not " + rec.digest,
    ):
        releases.verify(rec)


def test_an_archive_modified_on_disk_is_refused(releases: ReleaseStore, repo: Path) -> None:
    rec = releases.create(repo, "v1", NOW).record
    releases.verify(rec)
    evil = _tar_bytes(tarfile.TarInfo("app.py"), b"evil")
    releases.object_path(rec).write_bytes(gzip.compress(evil))
    with pytest.raises(
        ReleaseError, match="release v1 was modified on disk and is refused: archive"
    ):
        releases.verify(rec)
    releases.object_path(rec).write_bytes(b"not gzip")
    with pytest.raises(ReleaseError, match="unreadable"):
        releases.verify(rec)
    releases.object_path(rec).unlink()
    with pytest.raises(ReleaseError, match="is missing"):
        releases.verify(rec)
