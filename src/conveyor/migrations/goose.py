"""Migration files in goose's format, read into conveyor.core.migrations.Migration.

    migrations/
      001_create_users.sql            -- +goose Up / -- +goose Down sections
      20240101120000_add_email.sql    -- timestamps are versions too
      contract/005_drop_legacy.sql    -- a contract migration (or: -- conveyor:contract)

Statements end at a `;` outside quotes ('...', E'...', "..."), dollar quotes ($$...$$,
$fn$...$fn$) and comments (--, nested /* */), so a function body needs no
`-- +goose StatementBegin` here (it is honoured all the same: what lies between StatementBegin
and StatementEnd is one statement). Each statement keeps the line it starts on, so an error from
PostgreSQL can name the file and line. `-- +goose NO TRANSACTION` runs the file's statements
outside a transaction (CREATE INDEX CONCURRENTLY needs it).
"""

from __future__ import annotations

import re
from pathlib import Path

from conveyor.core.migrations import Migration, Statement, check_versions
from conveyor.migrations.runner import MigrationError

FILENAME = re.compile(r"(\d+)_([^/\\]+)\.sql")
_DOLLAR_TAG = re.compile(r"\$([A-Za-z_\x80-\uffff][A-Za-z0-9_\x80-\uffff]*)?\$")
_CONTRACT_MARK = "conveyor:contract"
CONTRACT_DIR = "contract"


class MigrationFileError(MigrationError):
    """A migration file that cannot be used; the message names the file and line."""

    def __init__(self, path: str, line: int | None, message: str) -> None:
        where = f"{path}:{line}" if line else path
        super().__init__(f"{where}: {message}")
        self.path = path
        self.line = line
        self.message = message


def parse_filename(filename: str) -> tuple[int, str] | None:
    """(version, name) of `001_create_users.sql`; None for a name that is not a migration's."""
    match = FILENAME.fullmatch(filename)
    if match is None:
        return None
    return int(match.group(1)), match.group(2)


def _is_ident(char: str) -> bool:
    return char.isalnum() or char == "_" or char == "$"


class _Parser:
    def __init__(self, text: str, path: str) -> None:
        self.text = text
        self.path = path
        self.section: str | None = None
        self.sections: dict[str, list[Statement]] = {}
        self.block_line = 0  # the line of an open StatementBegin, 0 when none is open
        self.no_transaction = False
        self.contract = False
        self.buf: list[str] = []
        self.start_line = 0  # where the statement being read starts; 0: none yet

    def fail(self, line: int, message: str) -> MigrationFileError:
        return MigrationFileError(self.path, line, message)

    def finish(self) -> None:
        sql = "".join(self.buf).strip()
        if sql and self.section is not None:
            self.sections[self.section].append(Statement(sql, self.start_line))
        self.buf = []
        self.start_line = 0

    def annotate(self, command: str, line: int) -> None:
        word = " ".join(command.split()).lower()
        if word in ("up", "down"):
            if self.block_line:
                raise self.fail(
                    line,
                    f"-- +goose {command} inside StatementBegin (line "
                    f"{self.block_line}) before its StatementEnd",
                )
            if word in self.sections:
                raise self.fail(line, f"a second -- +goose {command} section")
            if word == "up" and "down" in self.sections:
                raise self.fail(line, "-- +goose Up after the Down section: Up comes first")
            if word == "down" and "up" not in self.sections:
                raise self.fail(line, "-- +goose Down before any -- +goose Up section")
            self.finish()
            self.section = word
            self.sections[word] = []
        elif word == "statementbegin":
            if self.section is None:
                raise self.fail(line, "StatementBegin before -- +goose Up")
            if self.block_line:
                raise self.fail(
                    line, f"StatementBegin inside the one opened at line {self.block_line}"
                )
            if self.start_line:
                raise self.fail(
                    self.start_line, "statement not ended with ';' before StatementBegin"
                )
            self.block_line = line
        elif word == "statementend":
            if not self.block_line:
                raise self.fail(line, "StatementEnd without a StatementBegin")
            self.finish()
            self.block_line = 0
        elif word == "no transaction":
            self.no_transaction = True
        elif word.startswith("envsub"):
            raise self.fail(
                line,
                "-- +goose ENVSUB is not supported by conveyor (write the values "
                "into the file, or delegate with [migrations] command)",
            )
        else:
            raise self.fail(
                line,
                f"unknown annotation '-- +goose {command}' (known: Up, Down, StatementBegin, "
                "StatementEnd, NO TRANSACTION)",
            )

    def run(self) -> None:
        text, n = self.text, len(self.text)
        i, line, line_start = 0, 1, True
        while i < n:
            if line_start:
                line_start = False
                end = text.find("\n", i)
                end = n if end < 0 else end
                stripped = text[i:end].strip()
                if stripped.startswith("--"):
                    body = stripped[2:].strip()
                    if body.startswith("+goose"):
                        self.annotate(body[len("+goose") :].strip(), line)
                        i, line, line_start = end + 1, line + 1, True
                        continue
                    if body.split(" ", 1)[0].lower() == _CONTRACT_MARK:
                        self.contract = True
            c = text[i]
            if c == "\n":
                if self.start_line:
                    self.buf.append(c)
                i, line, line_start = i + 1, line + 1, True
                continue
            if text.startswith("--", i):
                end = text.find("\n", i)
                end = n if end < 0 else end
                if self.start_line:
                    self.buf.append(text[i:end])
                i = end
                continue
            if text.startswith("/*", i):
                j, depth, opened = i, 0, line
                while j < n:
                    if text.startswith("/*", j):
                        depth, j = depth + 1, j + 2
                    elif text.startswith("*/", j):
                        depth, j = depth - 1, j + 2
                        if depth == 0:
                            break
                    else:
                        line += text[j] == "\n"
                        j += 1
                if depth:
                    raise self.fail(opened, "comment /* is never closed with */")
                if self.start_line:
                    self.buf.append(text[i:j])
                i = j
                continue
            if c.isspace():
                if self.start_line:
                    self.buf.append(c)
                i += 1
                continue
            if self.section is None:
                raise self.fail(
                    line,
                    "SQL before -- +goose Up (every statement belongs to an Up or a Down section)",
                )
            if not self.start_line:
                self.start_line = line
            if c == ";" and not self.block_line:
                self.finish()
                i += 1
                continue
            j = self._quoted_end(i, line)
            if j > i + 1:
                chunk = text[i:j]
                self.buf.append(chunk)
                line += chunk.count("\n")
                i = j
                continue
            self.buf.append(c)
            i += 1
        if self.block_line:
            raise self.fail(self.block_line, "StatementBegin without a StatementEnd")
        self.finish()
        if "up" not in self.sections:
            raise self.fail(1, "no '-- +goose Up' section: start the file's SQL with that line")

    def _quoted_end(self, i: int, line: int) -> int:
        """The end of a quoted string, identifier or dollar-quoted body that starts at `i`;
        i + 1 when none starts there."""
        text = self.text
        c = text[i]
        before = "".join(self.buf[-2:])[-2:] if self.buf else ""
        if c in "'\"":
            # E'...' strings take backslash escapes; elsewhere a backslash is a plain character.
            escapes = c == "'" and before[-1:] in ("E", "e") and not _is_ident(before[-2:-1])
            j = i + 1
            while j < len(text):
                if escapes and text[j] == "\\":
                    j += 2
                elif text[j] == c:
                    if text.startswith(c, j + 1):
                        j += 2
                    else:
                        return j + 1
                else:
                    j += 1
            what = "string" if c == "'" else "quoted identifier"
            raise self.fail(line, f"{what} opened here is never closed with {c}")
        if c == "$" and not (before and _is_ident(before[-1])):
            match = _DOLLAR_TAG.match(text, i)
            if match is not None:
                tag = match.group(0)
                close = text.find(tag, match.end())
                if close < 0:
                    raise self.fail(line, f"dollar quote {tag} opened here is never closed")
                return close + len(tag)
        return i + 1


def parse(text: str, path: str, version: int, name: str, contract: bool = False) -> Migration:
    """One migration file's text; raises MigrationFileError naming `path` and the line."""
    parser = _Parser(text, path)
    parser.run()
    down = parser.sections.get("down")
    return Migration(
        version=version,
        name=name,
        path=path,
        up=tuple(parser.sections["up"]),
        down=tuple(down) if down is not None else None,
        transaction=not parser.no_transaction,
        contract=contract or parser.contract,
        text=text,
    )


def load(directory: Path, shown_from: Path | None = None) -> list[Migration]:
    """Every migration in `directory` and its `contract/` subdirectory, in version order.

    Paths in messages are relative to `shown_from` (the project or release root) when they can
    be. Raises MigrationFileError for a missing directory, a `.sql` file whose name is not
    `NNN_name.sql`, a file that does not parse, or one version in two files.
    """

    def shown(path: Path) -> str:
        if shown_from is not None:
            try:
                return str(path.relative_to(shown_from))
            except ValueError:
                pass
        return str(path)

    if not directory.is_dir():
        raise MigrationFileError(shown(directory), None, "no such directory ([migrations] dir)")
    found: list[Migration] = []
    for folder, contract in ((directory, False), (directory / CONTRACT_DIR, True)):
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.sql")):
            parsed = parse_filename(path.name)
            if parsed is None:
                raise MigrationFileError(
                    shown(path),
                    None,
                    "not a migration's name: use NNN_name.sql (e.g. "
                    "001_create_users.sql or 20240101120000_add_email.sql)",
                )
            version, name = parsed
            if version == 0:
                raise MigrationFileError(shown(path), None, "version 0 is reserved; start at 1")
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise MigrationFileError(shown(path), None, f"cannot be read: {exc}") from None
            found.append(parse(text, shown(path), version, name, contract))
    problems = check_versions(found)
    if problems:
        where, _, message = problems[0].partition(": ")
        raise MigrationFileError(where, None, message)
    return sorted(found, key=lambda m: m.version)
