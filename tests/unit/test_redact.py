"""The redactor: every known value replaced, longest first, in one pass; short values left."""

from __future__ import annotations

import json

from conveyor.secrets.redact import MIN_LENGTH, Redactor


def test_values_are_replaced_by_their_names() -> None:
    r = Redactor({"DB_PASSWORD": "hunter2-long", "TOKEN": "tok_abc123"})
    assert r.text("connect with hunter2-long and tok_abc123!") == (
        "connect with [secret:DB_PASSWORD] and [secret:TOKEN]!"
    )
    assert r.raw(b"x=hunter2-long") == b"x=[secret:DB_PASSWORD]"


def test_a_value_inside_another_is_replaced_by_the_longer_one() -> None:
    r = Redactor({"SHORT": "abcd", "LONG": "xxabcdxx"})
    assert r.text("xxabcdxx abcd") == "[secret:LONG] [secret:SHORT]"


def test_one_pass_never_redacts_inside_a_marker() -> None:
    # "secret" is a value and also part of every marker: a second pass would mangle them.
    r = Redactor({"A": "my-value-1", "B": "secret"})
    assert r.text("my-value-1") == "[secret:A]"


def test_short_values_are_skipped_and_say_why() -> None:
    r = Redactor({"PIN": "123", "KEY": "k" * MIN_LENGTH})
    assert r.text("123 kkkk") == "123 [secret:KEY]"
    assert "shorter than 4" in r.skipped["PIN"]


def test_lines_of_a_multi_line_value_and_its_json_form() -> None:
    pem = "-----BEGIN KEY-----\nMIIBOgIBAAJBAKj34GkxFhD90vcNLYLInFEX6Ppy1tPf9Cnzj4p4WGeKLs1Pt8Qu\n-----END"
    r = Redactor({"PEM": pem})
    assert "MIIBOg" not in r.text(
        "line: MIIBOgIBAAJBAKj34GkxFhD90vcNLYLInFEX6Ppy1tPf9Cnzj4p4WGeKLs1Pt8Qu"
    )
    encoded = json.dumps({"k": pem})
    assert r.text(encoded) == '{"k": "[secret:PEM]"}'


def test_json_like_data() -> None:
    r = Redactor({"T": "sekret-value"})
    data = {"reason": "failed: sekret-value", "list": ["a", "sekret-value"], "n": 3}
    assert r.data(data) == {"reason": "failed: [secret:T]", "list": ["a", "[secret:T]"], "n": 3}


def test_safe_cut_never_splits_a_value() -> None:
    r = Redactor({"T": "0123456789"})
    data = b"aaaa0123456789bbbb"
    assert r.safe_cut(data, 8) == 4
    assert r.safe_cut(data, 2) == 2
    assert r.safe_cut(b"0123456789bb", 5) == 10


def test_nothing_known_changes_nothing() -> None:
    r = Redactor()
    assert not r
    assert r.text("anything") == "anything"
    assert r.raw(b"anything") == b"anything"


def test_log_records_and_their_tracebacks_are_redacted() -> None:
    import io
    import logging

    from conveyor.engine.secrets import RedactingFilter

    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(RedactingFilter(Redactor({"TOKEN": "tok-123456"})))
    logger = logging.getLogger("test.redact")
    logger.addHandler(handler)
    try:
        logger.error("sent %s", "tok-123456")
        try:
            raise ValueError("bad tok-123456")
        except ValueError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    assert "tok-123456" not in out.getvalue()
    assert "sent [secret:TOKEN]" in out.getvalue()
    assert "ValueError: bad [secret:TOKEN]" in out.getvalue()
