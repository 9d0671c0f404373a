"""The migrations lint, rule by rule: a folder of SQL cases per rule, one runner.

lint_cases/<rule-id>/ holds `bad*.sql` files the rule must flag and `good*.sql` files (the safe
way to do the same thing) that must produce no finding at all. A case may be a directory of
migrations (linted together, in version order) instead of one file.

In a bad case, `-- expect: <rule-id>` says that the next line carries a finding of that rule;
the findings must be exactly the expected ones, no more, no fewer.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conveyor.core.lint.catalogue import RULES
from conveyor.migrations.lint import lint_paths

CASES = Path(__file__).parent / "lint_cases"
_EXPECT = re.compile(r"^\s*--\s*expect:\s*([a-z0-9-]+)\s*$")


def _cases(prefix: str) -> list[Path]:
    return sorted(p for p in CASES.glob(f"*/{prefix}*") if p.suffix == ".sql" or p.is_dir())


def _expected(case: Path) -> set[tuple[str, str, int]]:
    files = sorted(case.rglob("*.sql")) if case.is_dir() else [case]
    expected = set()
    for file in files:
        for number, line in enumerate(file.read_text().splitlines(), 1):
            match = _EXPECT.match(line)
            if match:
                expected.add((str(file), match.group(1), number + 1))
    return expected


def _id(path: Path) -> str:
    return f"{path.parent.name}/{path.stem}"


@pytest.mark.parametrize("case", _cases("bad"), ids=_id)
def test_bad_case_is_flagged_where_expected(case: Path) -> None:
    report = lint_paths([case])
    found = {(f.path, f.rule, f.line) for f in report.findings}
    expected = _expected(case)
    assert any(rule == case.parent.name for _, rule, _ in expected), "a bad case expects its rule"
    assert found == expected, [f.as_dict() for f in report.findings]
    for finding in report.findings:
        assert finding.message and finding.fix and finding.severity in ("error", "warning")


@pytest.mark.parametrize("case", _cases("good"), ids=_id)
def test_good_twin_is_not_flagged(case: Path) -> None:
    report = lint_paths([case])
    assert report.findings == [], [f.as_dict() for f in report.findings]
    assert report.exit_code == 0


def test_every_rule_has_a_bad_case_and_a_good_twin() -> None:
    # The allow-* rules are about comments: test_migration_lint.py covers them.
    statement_rules = {r for r in RULES if not r.startswith("allow-")}
    with_bad = {p.parent.name for p in _cases("bad")}
    with_good = {p.parent.name for p in _cases("good")}
    assert statement_rules <= with_bad, statement_rules - with_bad
    assert statement_rules <= with_good, statement_rules - with_good
    assert {p.name for p in CASES.iterdir()} <= set(RULES)
