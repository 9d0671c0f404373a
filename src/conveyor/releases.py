"""Releases: content-addressed, immutable snapshots of the application's source.

A release is a deterministic gzip'd tar: the same content always gives the same bytes and so the
same digest ("sha256-" + sha256 of the uncompressed tar stream), whatever the files' mtimes,
owners or the order the filesystem lists them in. Archives live in `home/releases/objects/`,
extracted trees (the processes' working directories) in `home/releases/trees/<digest>/`.

What goes in: inside a git work tree, the files committed at HEAD under `source` (uncommitted
changes are not released; submodule contents are not included, as with `git archive`); elsewhere,
the files of the directory. Either way `.git/`, `.conveyor/` (and the conveyor home, whatever its
name), virtualenvs (`.venv/`, `venv/`, and any directory holding a `pyvenv.cfg`) and `__pycache__/`
are left out. `node_modules/` is kept on purpose: for some apps it is part of what runs. Sockets,
fifos and device files are not content and are left out of directory snapshots.

A directory snapshot also leaves out what is probably a secret (`.env*`, private keys, credential
files: SECRET_PATTERNS), since nothing like git's staging says what the user meant to ship. A
`.conveyorignore` file at the top of the source (gitignore syntax) leaves out more, in both cases,
and can take a secret pattern back (`!.env.example`). What was left out is reported.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Literal, cast

import pathspec

from conveyor.store.db import DuplicateRelease, ReleaseRecord, Store
from conveyor.store.facts import FactStore

VERSION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")
DIGEST_RE = re.compile(r"sha256-[0-9a-f]{64}")
SKIPPED_DIRS = frozenset({".git", ".conveyor", ".venv", "venv", "__pycache__"})
IGNORE_FILE = ".conveyorignore"
# Left out of releases made without git (gitignore syntax): environment files and keys would be
# shipped with the code, and a static server or a bug could then serve them.
SECRET_PATTERNS = (
    ".env*",
    "*.pem",
    "*.key",
    "*.p12",
    "*.pfx",
    "id_rsa*",
    "id_dsa*",
    "id_ecdsa*",
    "id_ed25519*",
    ".netrc",
    ".pgpass",
    ".pypirc",
    ".npmrc",
    ".ssh/",
    ".aws/",
    ".gnupg/",
)
_CHUNK = 1 << 16
# Symlink chains longer than this are treated as loops (Linux gives up at 40 too).
_MAX_LINK_HOPS = 40


class ReleaseError(Exception):
    """A release cannot be created or used; the message says what to do about it."""


@dataclass(frozen=True)
class NewRelease:
    """A release just created, and what its creator should be told about it."""

    record: ReleaseRecord
    # Paths left out by SECRET_PATTERNS or .conveyorignore ("dir/" for a whole directory).
    left_out: tuple[str, ...] = ()
    # In a git work tree: changes not in the release, as (path, "modified"/"untracked"/...).
    uncommitted: tuple[tuple[str, str], ...] = ()
    # Earlier releases with the very same content.
    same_content_as: tuple[str, ...] = ()
    # The git tags that pointed at the released commit (recorded: `require_tag` reads them).
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Entry:
    """One member of a release, whatever it was read from (a git archive or the filesystem)."""

    name: str  # relative, "/"-separated, no trailing slash
    kind: Literal["file", "dir", "symlink"]
    executable: bool = False
    linkname: str = ""
    # Opens a regular file's content; returns the stream and its exact size.
    open: Callable[[], tuple[IO[bytes], int]] | None = None


class _HashingWriter:
    """Hashes everything written through it: the digest is of the uncompressed tar stream."""

    def __init__(self, sink: IO[bytes]) -> None:
        self.sink = sink
        self.hash = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        self.sink.write(data)
        return len(data)


class _HashingReader:
    def __init__(self, source: IO[bytes]) -> None:
        self.source = source
        self.hash = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.source.read(size)
        self.hash.update(data)
        return data


def validate_version(version: str) -> str:
    if not VERSION_RE.fullmatch(version):
        raise ReleaseError(
            f"invalid release version {version!r}: use 1 to 64 letters, digits, '.', '_', '+' "
            "or '-', starting with a letter or digit (e.g. 1.4.2 or 2024-05-01.1)"
        )
    return version


def _git(cwd: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["git", "-C", str(cwd), *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        check=False,
    )


def _git_head(source: Path) -> tuple[Path, str, str] | None:
    """(toplevel, prefix of source in it, full HEAD commit) if source is in a git work tree."""
    try:
        inside = _git(source, "rev-parse", "--is-inside-work-tree")
    except FileNotFoundError:
        return None  # no git installed: snapshot the directory
    if inside.returncode != 0 or inside.stdout.strip() != b"true":
        return None
    head = _git(source, "rev-parse", "--verify", "--quiet", "HEAD^{commit}")
    if head.returncode != 0:
        raise ReleaseError(
            f"{source} is in a git repository without any commit: releases snapshot HEAD, "
            "so commit your code first"
        )
    toplevel = _git(source, "rev-parse", "--show-toplevel").stdout.decode().strip()
    prefix = _git(source, "rev-parse", "--show-prefix").stdout.decode().strip()
    return Path(toplevel), prefix, head.stdout.decode().strip()


def _git_tags(source: Path, commit: str) -> tuple[str, ...]:
    """The tags pointing at `commit`, as `git tag --points-at` lists them."""
    listed = _git(source, "tag", "--points-at", commit)
    if listed.returncode != 0:
        return ()
    return tuple(sorted(t for t in listed.stdout.decode(errors="replace").splitlines() if t))


def _git_entries(
    toplevel: Path, prefix: str, commit: str, spool: IO[bytes], source: Path
) -> list[_Entry]:
    """The files committed under `prefix` at `commit`, read from `git archive` into `spool`."""
    # "<commit>:<prefix>" is the tree of the subdirectory: member names come out relative to it.
    result = subprocess.run(
        ["git", "-C", str(toplevel), "archive", "--format=tar", f"{commit}:{prefix}"],
        stdin=subprocess.DEVNULL,
        stdout=spool,
        stderr=subprocess.PIPE,
        check=False,
    )
    if result.returncode != 0:
        if prefix:
            raise ReleaseError(
                f"nothing committed under {source} at HEAD ({commit[:12]}): releases contain "
                "committed files only, so add and commit them first"
            )
        raise ReleaseError(f"git archive failed in {toplevel}: {result.stderr.decode().strip()}")
    spool.seek(0)
    # Left open on purpose: the entries' openers read from it while packing; the caller closes
    # the spool it reads from.
    tar = tarfile.open(fileobj=spool, mode="r:")  # noqa: SIM115
    entries: list[_Entry] = []
    for member in tar.getmembers():
        name = member.name.rstrip("/")
        if member.isdir():
            entries.append(_Entry(name, "dir"))
        elif member.issym():
            entries.append(_Entry(name, "symlink", linkname=member.linkname))
        elif member.isreg():

            def opener(member: tarfile.TarInfo = member) -> tuple[IO[bytes], int]:
                stream = tar.extractfile(member)
                assert stream is not None  # regular files always have content
                return stream, member.size

            entries.append(_Entry(name, "file", bool(member.mode & 0o111), open=opener))
    return entries


def _is_skipped_dir(path: Path) -> bool:
    return path.name in SKIPPED_DIRS or (path / "pyvenv.cfg").is_file()


def _walk_entries(root: Path, exclude: Path) -> list[_Entry]:
    """The directory's files, not descending into skipped directories (virtualenvs are big)."""
    entries: list[_Entry] = []
    pending: deque[tuple[Path, str]] = deque([(root, "")])
    while pending:
        directory, rel = pending.popleft()
        with os.scandir(directory) as scan:
            items = list(scan)
        for item in items:
            name = rel + item.name
            path = Path(item.path)
            if item.is_symlink():
                entries.append(_Entry(name, "symlink", linkname=os.readlink(path)))
            elif item.is_dir():
                if _is_skipped_dir(path) or path == exclude:
                    continue
                entries.append(_Entry(name, "dir"))
                pending.append((path, name + "/"))
            elif item.is_file():

                def opener(path: Path = path) -> tuple[IO[bytes], int]:
                    stream = path.open("rb")
                    # The size of what we opened, not of a stat() that could race a writer.
                    return stream, os.fstat(stream.fileno()).st_size

                executable = bool(item.stat().st_mode & 0o111)
                entries.append(_Entry(name, "file", executable, open=opener))
    return entries


def _drop_skipped(entries: list[_Entry]) -> list[_Entry]:
    """Apply the directory-walk skip rules to entries that came from git."""
    skipped = {
        e.name for e in entries if e.kind == "dir" and e.name.rsplit("/", 1)[-1] in SKIPPED_DIRS
    }
    skipped |= {e.name.rsplit("/", 1)[0] for e in entries if e.name.endswith("/pyvenv.cfg")}

    def kept(name: str) -> bool:
        parts = name.split("/")
        if any(part in SKIPPED_DIRS for part in parts[:-1]):
            return False
        return not any("/".join(parts[:i]) in skipped for i in range(1, len(parts) + 1))

    return [e for e in entries if kept(e.name)]


def _ignore_spec(source: Path, secrets: bool) -> pathspec.GitIgnoreSpec | None:
    """The rules that leave files out: SECRET_PATTERNS (without git), then .conveyorignore."""
    lines = list(SECRET_PATTERNS) if secrets else []
    try:
        lines += (source / IGNORE_FILE).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        pass
    except (OSError, UnicodeDecodeError) as exc:
        raise ReleaseError(f"cannot read {source / IGNORE_FILE}: {exc}") from exc
    return pathspec.GitIgnoreSpec.from_lines(lines) if lines else None


def _drop_ignored(
    entries: list[_Entry], spec: pathspec.GitIgnoreSpec | None
) -> tuple[list[_Entry], list[str]]:
    """Entries that no rule leaves out, and the names left out (a directory once, as "name/")."""
    if spec is None:
        return entries, []
    dropped: set[str] = set()
    left_out: list[str] = []
    for entry in sorted(entries, key=lambda e: e.name):
        parent = entry.name.rpartition("/")[0]
        if parent in dropped:
            # As in git: nothing inside an ignored directory comes back.
            dropped.add(entry.name)
        elif spec.match_file(entry.name + "/" if entry.kind == "dir" else entry.name):
            dropped.add(entry.name)
            left_out.append(entry.name + "/" if entry.kind == "dir" else entry.name)
    return [e for e in entries if e.name not in dropped], left_out


_STATUS = {"?": "untracked", "A": "added", "D": "deleted", "R": "renamed"}


def _uncommitted(source: Path) -> list[tuple[str, str]]:
    """Changes in the work tree under `source` that a release of HEAD does not contain."""
    result = _git(source, "status", "--porcelain", "-z", "--untracked-files=all", "--", ".")
    if result.returncode != 0:
        return []
    prefix = _git(source, "rev-parse", "--show-prefix").stdout.decode().strip()
    changes: list[tuple[str, str]] = []
    records = iter(result.stdout.decode(errors="replace").split("\0"))
    for record in records:
        if len(record) < 4:
            continue
        code, path = record[:2], record[3:]
        if "R" in code or "C" in code:
            next(records, None)  # the rename's source path
        path = path.removeprefix(prefix)
        parts = path.split("/")
        # Read from the project directory, not from the release: not worth a warning.
        if path == "conveyor.toml" or any(part in SKIPPED_DIRS for part in parts[:-1]):
            continue
        kind = next((_STATUS[c] for c in code if c in _STATUS), "modified")
        changes.append((path, kind))
    return changes


def _link_escapes(name: str, links: dict[str, str]) -> bool:
    """Whether symlink `name` resolves outside the release root, following the release's links."""
    current = name.split("/")[:-1]
    target = links[name]
    if target.startswith("/"):
        return True
    pending = deque(target.split("/"))
    hops = 0
    while pending:
        part = pending.popleft()
        if part in ("", "."):
            continue
        if part == "..":
            if not current:
                return True
            current.pop()
            continue
        current.append(part)
        next_target = links.get("/".join(current))
        if next_target is not None:
            hops += 1
            if hops > _MAX_LINK_HOPS:
                raise ReleaseError(f"symlink {name} is part of a symlink loop; remove the loop")
            if next_target.startswith("/"):
                return True
            current.pop()
            pending.extendleft(reversed(next_target.split("/")))
    return False


def _check_links(entries: list[_Entry], source: Path) -> None:
    links = {e.name: e.linkname for e in entries if e.kind == "symlink"}
    for name, target in sorted(links.items()):
        if _link_escapes(name, links):
            raise ReleaseError(
                f"symlink {name} -> {target} points outside {source}: a release must be "
                "self-contained, so copy the target in or make the link relative to a path "
                "inside the release"
            )


def _tarinfo(entry: _Entry) -> tarfile.TarInfo:
    """A header that depends on nothing but the entry: no times, owners or umask."""
    info = tarfile.TarInfo(entry.name)
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if entry.kind == "dir":
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
    elif entry.kind == "symlink":
        info.type = tarfile.SYMTYPE
        info.linkname = entry.linkname
        info.mode = 0o777
    else:
        info.type = tarfile.REGTYPE
        info.mode = 0o755 if entry.executable else 0o644
    return info


def _tar(entries: list[_Entry], sink: IO[bytes]) -> str:
    """Write the deterministic tar stream of `entries` to `sink`; return its digest."""
    hashing = _HashingWriter(sink)
    with tarfile.open(
        fileobj=cast(IO[bytes], hashing), mode="w|", format=tarfile.PAX_FORMAT
    ) as tar:
        for entry in sorted(entries, key=lambda e: e.name):
            info = _tarinfo(entry)
            if entry.open is None:
                tar.addfile(info)
                continue
            stream, info.size = entry.open()
            with stream:
                tar.addfile(info, stream)
    return "sha256-" + hashing.hash.hexdigest()


def _pack(entries: list[_Entry], out: IO[bytes]) -> str:
    """Write the deterministic .tar.gz of `entries` to `out`; return its digest."""
    # filename="" and mtime=0: otherwise gzip records the temp file's name and the time.
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0) as gz:
        return _tar(entries, cast(IO[bytes], gz))


class _Discard:
    def write(self, data: bytes) -> int:
        return len(data)


def tree_digest(tree: Path) -> str:
    """The digest of the files under `tree` as a release of them would have it.

    An extracted release gives back its own digest: extraction keeps names, kinds, executable
    bits and links, and the tar headers depend on nothing else. `__pycache__/` and virtualenvs
    are left out, as in a release (Python writes bytecode beside the sources it runs).
    """
    return _tar(_walk_entries(tree, tree / ".conveyor"), cast(IO[bytes], _Discard()))


@contextlib.contextmanager
def _temp_file(directory: Path, prefix: str) -> Iterator[tuple[IO[bytes], Path]]:
    """A temp file in `directory` (so it can be renamed into place), removed unless renamed."""
    fd, name = tempfile.mkstemp(prefix=prefix, dir=directory)
    path = Path(name)
    try:
        with os.fdopen(fd, "w+b") as handle:
            yield handle, path
    finally:
        path.unlink(missing_ok=True)


class ReleaseStore:
    def __init__(self, home: Path, store: Store, app: str) -> None:
        self.home = home
        self.store = store
        self.app = app
        self.objects = home / "releases" / "objects"
        self.trees = home / "releases" / "trees"

    def create(
        self,
        source: Path,
        version: str | None,
        now: datetime,
        prepare: Callable[[ReleaseRecord, Path], None] | None = None,
    ) -> NewRelease:
        """Snapshot `source` as release `version` (default: short commit or UTC timestamp).

        `prepare(record, tree)` runs on the stored snapshot before the release is recorded
        (conveyor.images builds its images there): if it raises, no release is recorded."""
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        source = source.resolve()
        if not source.is_dir():
            raise ReleaseError(f"cannot release {source}: not a directory")
        git = _git_head(source)
        commit = git[2] if git else None
        if version is None:
            version = commit[:12] if commit else now.astimezone(UTC).strftime("%Y%m%d-%H%M%S")
        validate_version(version)
        self._refuse_existing(version)

        self.objects.mkdir(parents=True, exist_ok=True)
        with (
            _temp_file(self.objects, ".spool-") as (spool, _),
            _temp_file(self.objects, ".new-") as (out, out_path),
        ):
            if git:
                entries = _git_entries(git[0], git[1], git[2], spool, source)
            else:
                entries = _walk_entries(source, self.home.resolve())
            entries = _drop_skipped(entries)
            entries, left_out = _drop_ignored(entries, _ignore_spec(source, secrets=not git))
            if not any(e.kind != "dir" for e in entries):
                what = "committed files at HEAD" if git else "files"
                raise ReleaseError(
                    f"nothing to release: {source} has no {what} (after leaving out .git, "
                    f".conveyor, virtualenvs, __pycache__ and {IGNORE_FILE} matches)"
                )
            _check_links(entries, source)
            try:
                digest = _pack(entries, out)
            except OSError as exc:
                raise ReleaseError(f"cannot read {source} while snapshotting it: {exc}") from exc
            out.flush()
            os.fsync(out.fileno())
            size = out.tell()
            # Same digest, same bytes: replacing an existing object with itself is harmless.
            os.replace(out_path, self.objects / f"{digest}.tar.gz")

        record = ReleaseRecord(
            app=self.app, version=version, commit=commit, digest=digest, size=size, created_at=now
        )
        if prepare is not None:
            prepare(record, self.tree(record))
        same = [r.version for r in self.store.list_releases(self.app) if r.digest == digest]
        try:
            self.store.add_release(record)
        except DuplicateRelease:
            # Another process created this version since we checked.
            self._refuse_existing(version)
            raise
        tags = _git_tags(source, git[2]) if git else ()
        if tags:
            FactStore(self.store).add_tags(self.app, version, tags)
        return NewRelease(
            record,
            left_out=tuple(left_out),
            uncommitted=tuple(_uncommitted(source)) if git else (),
            same_content_as=tuple(reversed(same)),  # oldest first
            tags=tags,
        )

    def _refuse_existing(self, version: str) -> None:
        existing = self.store.get_release(self.app, version)
        if existing is not None:
            raise ReleaseError(
                f"release {version} already exists (digest {existing.digest}): releases are "
                "immutable, so pass a new version (or commit your changes for a new default)"
            )

    def object_path(self, rec: ReleaseRecord) -> Path:
        if not DIGEST_RE.fullmatch(rec.digest):
            raise ReleaseError(f"release {rec.version} has an invalid digest {rec.digest!r}")
        return self.objects / f"{rec.digest}.tar.gz"

    def verify(self, rec: ReleaseRecord) -> None:
        """Refuse (ReleaseError) a release whose archive or extracted files no longer have its
        digest: what runs must be the very snapshot that passed the earlier environments."""
        archive = self.object_path(rec)
        if not archive.is_file():
            raise ReleaseError(
                f"release {rec.version}: archive {archive} is missing; "
                "create the release again under a new version"
            )
        refused = f"release {rec.version} was modified on disk and is refused"
        try:
            with archive.open("rb") as raw, gzip.GzipFile(fileobj=raw, mode="rb") as gz:
                reader = _HashingReader(cast(IO[bytes], gz))
                while reader.read(_CHUNK):
                    pass
        except (OSError, EOFError, zlib.error) as exc:
            raise ReleaseError(f"{refused}: archive {archive} is unreadable ({exc})") from exc
        actual = "sha256-" + reader.hash.hexdigest()
        if actual != rec.digest:
            raise ReleaseError(
                f"{refused}: archive {archive} has digest {actual}, not {rec.digest}; create "
                "the release again under a new version"
            )
        tree = self.trees / rec.digest
        if tree.is_dir():
            try:
                actual = tree_digest(tree)
            except OSError as exc:
                raise ReleaseError(f"{refused}: cannot read {tree} ({exc})") from exc
            if actual != rec.digest:
                raise ReleaseError(
                    f"{refused}: its files in {tree} have digest {actual}, not {rec.digest} "
                    "(something wrote into the release); remove that directory and conveyor "
                    "unpacks the release again from its archive"
                )

    def tree(self, rec: ReleaseRecord) -> Path:
        """The release's extracted tree, extracted (and verified) on first use."""
        archive = self.object_path(rec)
        dest = self.trees / rec.digest
        if dest.is_dir():
            return dest
        if not archive.is_file():
            raise ReleaseError(
                f"release {rec.version}: archive {archive} is missing; "
                "create the release again under a new version"
            )
        self.trees.mkdir(parents=True, exist_ok=True)
        # Extract beside the destination and rename: a tree that exists is always complete.
        staging = Path(tempfile.mkdtemp(prefix=f".{rec.digest}.", dir=self.trees))
        try:
            self._extract(rec, archive, staging)
            try:
                staging.rename(dest)
            except OSError:
                if not dest.is_dir():
                    raise
                # Another process extracted the same release first; its tree is as good.
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        return dest

    def _extract(self, rec: ReleaseRecord, archive: Path, staging: Path) -> None:
        corrupt = f"release {rec.version}: archive {archive} is corrupt"
        try:
            with archive.open("rb") as raw, gzip.GzipFile(fileobj=raw, mode="rb") as gz:
                reader = _HashingReader(cast(IO[bytes], gz))
                with tarfile.open(fileobj=cast(IO[bytes], reader), mode="r|") as tar:
                    # The "data" filter refuses absolute paths, "..", links out of the tree, devices.
                    tar.extractall(staging, filter="data")
                # The digest covers the whole stream, including the end-of-archive padding.
                while reader.read(_CHUNK):
                    pass
        except tarfile.FilterError as exc:
            raise ReleaseError(f"{corrupt}: unsafe member ({exc})") from exc
        except (OSError, EOFError, zlib.error, tarfile.TarError) as exc:
            raise ReleaseError(f"{corrupt} ({exc})") from exc
        actual = "sha256-" + reader.hash.hexdigest()
        if actual != rec.digest:
            raise ReleaseError(f"{corrupt}: its content has digest {actual}, not {rec.digest}")
