"""The master key: where it comes from, and the check that it is the right one.

In order: `CONVEYOR_MASTER_KEY` (32 bytes, base64); `CONVEYOR_MASTER_PASSPHRASE` through
Argon2id; the key file of this project under $XDG_CONFIG_HOME (or ~/.config)/conveyor/keys/,
outside the project directory so that it is neither committed nor copied with it; a passphrase
typed on a terminal, when the secrets were written under one. With none of them and no secret
written yet, the key file is created (0600) and its path said once.

The key is never stored beside the data: the database holds, per app, which kind of key it is,
the Argon2id salt for a passphrase, and a check value (conveyor.secrets.crypto.key_check) that
tells a wrong key from a damaged value before anything is decrypted.
"""

from __future__ import annotations

import base64
import binascii
import os
import stat
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from conveyor.markers import project_id
from conveyor.secrets.base import SecretError
from conveyor.secrets.crypto import KEY_BYTES, key_check, same_key
from conveyor.store.secrets import KeyringRecord, SecretStore

ENV_KEY = "CONVEYOR_MASTER_KEY"
ENV_PASSPHRASE = "CONVEYOR_MASTER_PASSPHRASE"
SALT_BYTES = 16
# Argon2id parameters (RFC 9106's second recommendation: 64 MiB, 3 passes, 4 lanes).
ARGON2_MEMORY_KIB = 65536
ARGON2_ITERATIONS = 3
ARGON2_LANES = 4

Prompt = Callable[[str], str]


@dataclass(frozen=True)
class MasterKey:
    key: bytes = field(repr=False)
    kind: str  # key | passphrase
    source: str  # where it came from, for messages

    def __str__(self) -> str:
        return f"the master key from {self.source}"


def key_file(home: Path) -> Path:
    """This project's key file: outside the project, named by the project's id."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "conveyor" / "keys" / f"{project_id(home)}.key"


def derive(passphrase: str, salt: bytes) -> bytes:
    from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

    kdf = Argon2id(
        salt=salt,
        length=KEY_BYTES,
        iterations=ARGON2_ITERATIONS,
        lanes=ARGON2_LANES,
        memory_cost=ARGON2_MEMORY_KIB,
    )
    return kdf.derive(passphrase.encode("utf-8"))


def parse_key(text: str, source: str) -> bytes:
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != KEY_BYTES:
        raise SecretError(
            f"{source} must hold {KEY_BYTES} random bytes in base64, e.g. the output of "
            "`python3 -c 'import base64, os; print(base64.b64encode(os.urandom(32)).decode())'`"
        )
    return key


def _read_key_file(path: Path) -> bytes | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise SecretError(f"cannot read the master key file {path}: {exc.strerror}") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SecretError(
            f"the master key file {path} can be read by others (mode "
            f"{stat.S_IMODE(st.st_mode):04o}): `chmod 600 {path}`, and consider the key leaked"
        )
    try:
        return parse_key(path.read_text(encoding="ascii"), f"the master key file {path}")
    except (OSError, UnicodeDecodeError) as exc:
        raise SecretError(f"cannot read the master key file {path}: {exc}") from None


def _create_key_file(path: Path, app: str) -> bytes:
    key = os.urandom(KEY_BYTES)
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first: use theirs
        found = _read_key_file(path)
        assert found is not None
        return found
    except OSError as exc:
        raise SecretError(f"cannot create the master key file {path}: {exc.strerror}") from None
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(base64.b64encode(key).decode("ascii") + "\n")
    sys.stderr.write(
        f"conveyor: created the master key of {app}'s secrets: {path}\n"
        "conveyor: keep a copy somewhere safe: without it the secrets cannot be read\n"
    )
    sys.stderr.flush()
    return key


class KeySource:
    """Finds the master key of one app's secrets, once, and checks it against the store."""

    def __init__(
        self,
        secrets: SecretStore,
        app: str,
        home: Path,
        prompt: Prompt | None = None,
        project_dir: Path | None = None,
    ) -> None:
        self._secrets = secrets
        self._app = app
        self._home = home
        self._prompt = prompt
        self._project_dir = project_dir
        self._key: MasterKey | None = None
        # The resolver asks for several names at once, each in a thread: one prompt, one
        # Argon2id derivation, one key file.
        self._lock = threading.Lock()

    @property
    def file(self) -> Path:
        return key_file(self._home)

    def get(self, create: bool = True) -> MasterKey | None:
        """The checked key; None when there is none yet and `create` is False."""
        with self._lock:
            if self._key is None:
                self._key = self._load(create)
            return self._key

    def _load(self, create: bool) -> MasterKey | None:
        ring = self._secrets.keyring(self._app)
        given = self._find(ring)
        if given is not None:
            found, salt = given
        elif create:
            found, salt = MasterKey(self._new_file(), "key", f"the key file {self.file}"), None
        else:
            return None
        if ring is None:
            ring = self._secrets.init_keyring(
                KeyringRecord(self._app, found.kind, salt, key_check(found.key), datetime.now(UTC))
            )
        if not same_key(found.key, ring.check):
            raise SecretError(
                f"wrong master key for the secrets of {self._app}: {found} is not the key they "
                f"were written under ({self._expected(ring)})"
            )
        return found

    def _find(self, ring: KeyringRecord | None) -> tuple[MasterKey, str | None] | None:
        """The key given by the environment, the key file or a prompt, with its salt."""
        explicit = os.environ.get(ENV_KEY)
        if explicit:
            return MasterKey(parse_key(explicit, ENV_KEY), "key", ENV_KEY), None
        passphrase = os.environ.get(ENV_PASSPHRASE)
        if passphrase:
            return self._derived(passphrase, ring, ENV_PASSPHRASE)
        from_file = _read_key_file(self.file)
        if from_file is not None:
            return MasterKey(from_file, "key", f"the key file {self.file}"), None
        if ring is None:
            return None
        if ring.kind == "passphrase":
            if self._prompt is None:
                raise SecretError(
                    f"the secrets of {self._app} are under a passphrase: set {ENV_PASSPHRASE} "
                    "(or run the command on a terminal to type it)"
                )
            typed = self._prompt(f"Passphrase of {self._app}'s secrets: ")
            return self._derived(typed, ring, "the passphrase typed")
        raise SecretError(
            f"no master key for the secrets of {self._app}: set {ENV_KEY}, or put back the key "
            f"file {self.file} they were written under"
        )

    def _derived(
        self, passphrase: str, ring: KeyringRecord | None, source: str
    ) -> tuple[MasterKey, str]:
        if not passphrase:
            raise SecretError(f"{source} is empty")
        if ring is not None and ring.salt:
            salt = ring.salt
        else:
            salt = base64.b64encode(os.urandom(SALT_BYTES)).decode("ascii")
        key = derive(passphrase, base64.b64decode(salt))
        return MasterKey(key, "passphrase", source), salt

    def _new_file(self) -> bytes:
        path = self.file
        if self._project_dir is not None and path.resolve().is_relative_to(
            self._project_dir.resolve()
        ):
            raise SecretError(
                f"the master key file would be {path}, inside the project: set XDG_CONFIG_HOME "
                f"to a directory outside it, or set {ENV_KEY}"
            )
        return _create_key_file(path, self._app)

    def _expected(self, ring: KeyringRecord) -> str:
        if ring.kind == "passphrase":
            return f"a passphrase, since {ring.created_at:%Y-%m-%d}"
        return f"a key set up {ring.created_at:%Y-%m-%d}: {ENV_KEY} or the key file {self.file}"
