"""Rules over parsed SQL migration statements (pure: no files, no database).

The statements come parsed by pglast (PostgreSQL's own parser, libpg_query); reading the files,
the goose sections, allow comments and the report live in conveyor.migrations.lint.

- catalogue: every rule's id, severity and one-line summary, and what a finding carries.
- rules: the checks, one statement at a time, with what earlier statements of the file (and
  earlier files) established: tables created here, lock_timeout set, validated CHECKs.
- volatility: whether a column default is evaluated once (metadata-only) or per row (rewrite).
"""
