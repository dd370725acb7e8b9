"""Every Python example of the documentation runs: the ```python blocks of README.md and docs/**/*.md.

Each page is one test: its runnable blocks run in order, in one namespace, in a fresh interpreter
whose working folder is a temporary one (files an example writes land there); a traceback names the
page and its line. Fence info strings (docs/contributing.md, "Documentation"):

- ```python             runs;
- ```python {.ray}      runs, and starts a Ray of its own: the page's test is marked ``ray`` and first
                        stops the session's Ray (``ray_stopped``), so two Rays never run at once
                        (``make test-python`` runs this module in a pytest process of its own, as
                        the other modules with a Ray of their own, so no process restarts Ray);
- ```python {.no-run}   is only compiled (a cluster address, a GPU, minutes of training): keep it rare.

Any other class on a python fence fails the page's test, so a typo cannot silently skip an example.
The Markdown build itself (links, anchors, the API reference) is ``make docs``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
KINDS = {"": "run", ".ray": "ray", ".no-run": "no-run"}
PAGE_TIMEOUT_S = 600  # a hang guard only (a page that starts Ray takes ~10-40 s on a loaded machine)

OPENING = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`\n]*?)[ \t]*$")
INFO = re.compile(r"^(?P<lang>[\w+-]*)[ \t]*(?:\{(?P<attrs>[^}]*)\})?$")


@dataclass(frozen=True)
class Block:
    page: str  # relative to the repository
    line: int  # 1-based line of the block's first code line
    kind: str  # "run", "ray", "no-run", or "bad: ..." for a fence this test does not know
    code: str


def python_blocks(path: Path, page: str = "") -> list[Block]:
    """The page's fenced python blocks (indented ones, e.g. in lists, dedented by their fence's indent);
    ``page`` names it in tracebacks (default: its path in the repository)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    page = page or str(path.relative_to(ROOT))
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        opening = OPENING.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, fence, info = opening["indent"], opening["fence"], opening["info"]
        closing = re.compile(rf"^{re.escape(indent)}{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$")
        end = next((j for j in range(i + 1, len(lines)) if closing.match(lines[j])), len(lines))
        parsed = INFO.match(info)
        if parsed and parsed["lang"] == "python":
            attrs = (parsed["attrs"] or "").split()
            kind = KINDS.get(" ".join(attrs), f"bad: unknown fence attributes {{{parsed['attrs']}}} (known: .ray, .no-run)")
            code = "\n".join(line[len(indent):] if line.startswith(indent) else line for line in lines[i + 1 : end])
            blocks.append(Block(page, i + 2, kind, code + "\n"))
        elif info.startswith("python"):
            blocks.append(Block(page, i + 2, f"bad: unreadable fence info {info!r}", ""))
        i = end + 1
    return blocks


# Runs the blocks given as JSON on stdin in one namespace; line numbers are kept by padding, so a
# traceback points at the page's own line.
RUNNER = """
import json, sys
namespace = {"__name__": "__main__"}
for block in json.load(sys.stdin):
    exec(compile("\\n" * (block["line"] - 1) + block["code"], block["page"], "exec"), namespace)
"""

PAGE_BLOCKS = {page: python_blocks(page) for page in PAGES}
PARAMS = [
    pytest.param(page, id=str(page.relative_to(ROOT)), marks=[pytest.mark.ray] if any(b.kind == "ray" for b in blocks) else [])
    for page, blocks in PAGE_BLOCKS.items()
    if blocks
]


def test_the_docs_have_examples_to_run():
    pages = {p.relative_to(ROOT).as_posix() for p, blocks in PAGE_BLOCKS.items() if any(b.kind != "no-run" for b in blocks)}
    assert {"README.md", "docs/getting-started.md", "docs/concepts/buffer-types.md", "docs/concepts/sharding.md"} <= pages


def test_fences_are_parsed_as_written(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "```python\na = 1\n```\n"
        "- item\n\n  ```python {.no-run}\n  b = 2\n  ```\n"
        "````markdown\n```python\nnot_a_block = 0\n```\n````\n"
        "```python {.norun}\nc = 3\n```\n"
        "```bash\necho 4\n```\n"
    )
    blocks = python_blocks(page, "page.md")
    assert [(b.line, b.kind, b.code) for b in blocks[:2]] == [(2, "run", "a = 1\n"), (7, "no-run", "b = 2\n")]
    assert len(blocks) == 3 and blocks[2].kind.startswith("bad: unknown fence attributes {.norun}")


@pytest.mark.parametrize("page", PARAMS)
def test_page_examples_run(page: Path, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    blocks = PAGE_BLOCKS[page]
    bad = [f"{b.page}:{b.line}: {b.kind[5:]}" for b in blocks if b.kind.startswith("bad: ")]
    assert not bad, "\n".join(bad)
    for block in blocks:  # every block at least compiles, the no-run ones included
        compile("\n" * (block.line - 1) + block.code, block.page, "exec")
    runnable = [{"page": b.page, "line": b.line, "code": b.code} for b in blocks if b.kind in ("run", "ray")]
    if not runnable:
        return
    if any(b.kind == "ray" for b in blocks):
        request.getfixturevalue("ray_stopped")  # the page's example starts (and shuts down) its own Ray
    env = {**os.environ, "MPLBACKEND": "Agg"}  # ray_replay as this pytest imports it (installed, or PYTHONPATH)
    result = subprocess.run(
        [sys.executable, "-c", RUNNER], input=json.dumps(runnable), cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=PAGE_TIMEOUT_S, check=False,
    )
    failed = result.returncode != 0
    assert not failed, f"an example of {page.relative_to(ROOT)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-8000:]}"


def test_readme_links_resolve():
    """README.md is not part of the site (whose links mkdocs checks): its relative links must name files."""
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", (ROOT / "README.md").read_text(encoding="utf-8"))
    relative = [link for link in links if "://" not in link]
    assert relative, "the README links to the docs"
    missing = [link for link in relative if not (ROOT / link).exists()]
    assert not missing, f"README.md links to missing files: {missing}"
