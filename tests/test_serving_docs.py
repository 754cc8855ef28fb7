"""docs/serving.md and ``swv serve`` cannot drift apart: every flag the page names for ``swv serve``
exists in ``swv serve -h``, and every flag of ``swv serve -h`` is on the page. The flag list is
read from the command's help when the test runs (so flags added by other branches are checked
against the merged CLI)."""

from __future__ import annotations

import re
from pathlib import Path

from typer.testing import CliRunner

from swv.cli.main import app

DOC = Path(__file__).resolve().parents[1] / "docs" / "serving.md"
#: From this heading on, the page names the flags of other tools (vLLM, ``swv export``).
OTHER_TOOLS = "## Outgrowing one server"
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9]*(?:-[a-z0-9]+)*")


def help_flags() -> set[str]:
    """The option names in the rows of ``swv serve -h`` (printed wide, so none is cut short)."""
    result = CliRunner().invoke(app, ["serve", "-h"], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    flags = set()
    for line in result.output.splitlines():
        if not line.startswith("│ -"):
            continue
        for token in line.strip("│ ").split():
            if not token.startswith("-"):
                break
            flags.add(token)
    return flags - {"--help", "-h"}


def doc_flags() -> set[str]:
    text = DOC.read_text(encoding="utf-8")
    assert OTHER_TOOLS in text, f"{DOC.name} lost its heading {OTHER_TOOLS!r}"
    return set(FLAG.findall(text.split(OTHER_TOOLS)[0]))


def test_the_help_is_read_whole() -> None:
    flags = help_flags()
    assert {"--host", "--max-body-bytes", "--max-json-structure-bytes", "--no-length-bound"} <= flags
    assert not any(flag.endswith(("…", "-")) for flag in flags), flags


def test_every_flag_the_page_names_exists() -> None:
    unknown = doc_flags() - help_flags()
    assert not unknown, f"{DOC.name} names flags `swv serve -h` does not have: {sorted(unknown)}"


def test_every_serve_flag_is_on_the_page() -> None:
    missing = help_flags() - doc_flags()
    assert not missing, f"{DOC.name} does not mention these `swv serve` flags: {sorted(missing)}"
