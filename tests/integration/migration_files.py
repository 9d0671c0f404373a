"""Migration files and a query helper shared by the migration tests."""

from __future__ import annotations

from pathlib import Path

import psycopg

USERS = """\
-- +goose Up
CREATE TABLE users (id bigint PRIMARY KEY, name text NOT NULL);
INSERT INTO users VALUES (1, 'ada');

-- +goose Down
DROP TABLE users;
"""
EMAIL = """\
-- +goose Up
ALTER TABLE users ADD COLUMN email text;

-- +goose Down
ALTER TABLE users DROP COLUMN email;
"""
# A contract migration without a Down section.
DROP_NAME = """\
-- conveyor:contract
-- +goose Up
ALTER TABLE users DROP COLUMN name;
"""


def write(root: Path, files: dict[str, str]) -> Path:
    """`files` (names relative to root/migrations) written; root/migrations."""
    folder = root / "migrations"
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return folder


def query(url: str, sql: str) -> list[tuple[object, ...]]:
    with psycopg.connect(url) as conn:
        cur = conn.execute(sql.encode())
        return list(cur.fetchall()) if cur.description else []
