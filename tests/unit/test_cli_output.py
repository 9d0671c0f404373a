"""The CLI's output helpers: escape sequences out of quoted app output, conclusions said once."""

from __future__ import annotations

import pytest

from conveyor.cli.output import Progress, clean


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("\x1b[31mERROR\x1b[0m boom", "ERROR boom"),
        ("\x1b[1;38;5;196mbold\x1b[m", "bold"),
        ("title\x1b]0;pwned\x07 after", "title after"),
        ("osc\x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\ end", "osclink end"),
        ("cursor\x1b[2J\x1b[Hhome", "cursorhome"),
        ("bell\x07 and \x1bc reset", "bell and  reset"),
        ("tab\tand\nnewline stay\r", "tab\tand\nnewline stay"),
        ("[bold]not markup[/bold]", "[bold]not markup[/bold]"),
    ],
)
def test_clean_strips_terminal_escapes(raw: str, shown: str) -> None:
    assert clean(raw) == shown


def test_a_conclusion_the_result_repeats_is_printed_once(
    capsys: pytest.CaptureFixture[str],
) -> None:
    progress = Progress(json_mode=False)
    progress({"step": "started", "deployment": 7, "message": "deploying v1 (deployment #7)"})
    progress({"step": "failed", "message": "web (blue) exited: exited with code 3"})
    progress.settle("web (blue) exited: exited with code 3\nlast output of web:\n  boom")
    out = capsys.readouterr().out
    assert progress.deployment == 7
    assert "deploying v1 (deployment #7)" in out
    assert "exited with code 3" not in out


def test_a_conclusion_the_result_does_not_repeat_is_printed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    progress = Progress(json_mode=False)
    progress({"step": "rolled_back", "message": "rolled back: error rate 5%"})
    progress({"step": "stopped", "message": "stopped web v2"})
    progress.settle(None)
    out = capsys.readouterr().out.splitlines()
    assert [line.split("] ", 1)[1] for line in out] == [
        "rolled back: error rate 5%",
        "stopped web v2",
    ]
