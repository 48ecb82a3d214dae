"""The README as a user reads it: every ```python block runs as written, each in a fresh
namespace (a reader copies one block at a time); ```bash blocks are only shown, never run, and
no block is left without a language. Also the README's promises about itself: ≤ 300 lines,
the two quick-start commands first, the sections the maintainers fill, local links that
resolve, and no issue numbers."""

from __future__ import annotations

import re
from pathlib import Path

import chex
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```\s*$", re.S | re.M)


def _blocks(text: str) -> list[tuple[str, str, int]]:
    """(language, code, line number) of every fenced block."""
    return [(m.group(1).strip(), m.group(2), text[:m.start()].count("\n") + 1)
            for m in FENCE.finditer(text)]


TEXT = README.read_text()
BLOCKS = _blocks(TEXT)
PYTHON = [(code, line) for lang, code, line in BLOCKS if lang == "python"]


def test_readme_is_a_short_guide():
    lines = TEXT.splitlines()
    assert len(lines) <= 300, f"README has {len(lines)} lines (at most 300)"
    lang, code, _ = BLOCKS[0]
    assert lang == "bash"
    assert [c.split("#")[0].strip() for c in code.strip().splitlines()] == ["make demo",
                                                                            "make test"]
    first_heading = next(i for i, s in enumerate(lines) if s.startswith("## "))
    assert lines[first_heading] == "## Quick start"
    for heading, marker in (("## Architecture", "<!-- architecture -->"),
                            ("## Add your own method", "<!-- custom-algorithm -->")):
        i = lines.index(heading)
        assert lines[i + 1] == marker
    assert not re.search(r"\bissue\s*#?\d+|#\d+\b", TEXT, re.I), "issue numbers in the README"


def test_every_block_has_a_language():
    langs = {lang for lang, _, _ in BLOCKS}
    assert "" not in langs, "a fenced block without a language"
    assert langs <= {"python", "bash", "bibtex"}, langs
    assert len(PYTHON) >= 5


def test_readme_links_resolve():
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", TEXT):
        if re.match(r"[a-z]+://", target):
            continue
        assert (ROOT / target).exists(), f"README links to a missing {target}"


def test_reports_have_no_issue_numbers_and_resolve_links():
    reports = sorted((ROOT / "experiments" / "reports").glob("*.md"))
    assert len(reports) >= 10
    for path in reports:
        text = path.read_text()
        assert not re.search(r"\bissue\s*#?\d+|(?<![\w&])#\d+\b", text, re.I), path.name
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if not re.match(r"[a-z]+://", target):
                assert (path.parent / target).exists(), f"{path.name} links to {target}"


@pytest.mark.parametrize("code,line", PYTHON, ids=[f"line{line}" for _, line in PYTHON])
def test_python_block_runs(code, line, capsys):
    ns: dict = {"__name__": "__readme__"}
    exec(compile(code, f"README.md:{line}", "exec"), ns)
    result = ns.get("result")
    if result is not None:  # a block that runs a method: finite final state of the start's shapes
        chex.assert_tree_all_finite(result.state.x)
        chex.assert_trees_all_equal_shapes(result.state.x, ns["x0"])
        if "grad_F_sq" in result.history:  # and, where it is reported, progress
            hist = np.asarray(result.history["grad_F_sq"])
            assert np.all(np.isfinite(hist)) and hist[-1] < hist[0]
