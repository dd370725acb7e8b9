"""MkDocs hook (docs/mkdocs.yml, ``hooks:``): builds the site from the Markdown pages under docs/.

mkdocs refuses a ``docs_dir`` that holds its own config file, so ``docs_dir`` is docs/site-src/ (the
pages that exist only in the site: the API reference, whose ``::: name`` lines mkdocstrings expands),
and this hook adds, at build time:

- every ``docs/**/*.md`` outside site-src/ and hooks/, under its path relative to docs/
  (docs/concepts/sharding.md is the site's concepts/sharding.md, its nav entry ``concepts/sharding.md``);
- benchmarks/results/ (JSON, Markdown, PNG) as the site's ``benchmarks/results/``, so the benchmark
  page shows the committed results and plots rather than copies of them.

Pages under docs/ are plain Markdown that also reads right on a code host: they reach the results as
``../benchmarks/results/x.png`` (from docs/x.md; one ``../`` more per folder level), and the hook
rewrites those links to the site's copy. Any other link that leaves docs/ is left alone, and mkdocs
--strict fails on it (validation in mkdocs.yml): link to a page, or write a source path as code.
A page present both in site-src/ and under docs/ fails the build (ambiguous).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files

DOCS = Path(__file__).resolve().parents[1]  # docs/
ROOT = DOCS.parent  # the repository
RESULTS = "benchmarks/results"
RESULT_SUFFIXES = {".md", ".json", ".png"}
NOT_PAGES = {"site-src", "hooks"}  # folders under docs/ that hold no pages of their own


def _docs_pages() -> list[Path]:
    return sorted(p for p in DOCS.rglob("*.md") if p.relative_to(DOCS).parts[0] not in NOT_PAGES)


def on_files(files: Files, config: Any) -> Files:
    """Adds docs/**/*.md and benchmarks/results/* to the files mkdocs found in site-src/."""
    use_urls = config["use_directory_urls"]
    site_dir = config["site_dir"]
    added = [File(str(p.relative_to(DOCS)), str(DOCS), site_dir, use_urls) for p in _docs_pages()]
    results = ROOT / RESULTS
    added += [
        File(str(p.relative_to(ROOT)), str(ROOT), site_dir, use_urls)
        for p in sorted(results.iterdir())
        if p.is_file() and p.suffix in RESULT_SUFFIXES
    ]
    for file in added:
        if files.get_file_from_path(file.src_uri) is not None:
            raise PluginError(f"{file.src_uri} is both in docs/site-src/ and at {file.abs_src_path}: keep one")
        files.append(file)
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    """In a page from docs/, links to ../benchmarks/results/ (as the repository lays it out) point
    at the site's copy of the results instead."""
    source = Path(page.file.abs_src_path or "")
    if not source.is_relative_to(DOCS) or source.relative_to(DOCS).parts[0] in NOT_PAGES:
        return markdown  # a site-src/ page (written in the site's terms) or a results page
    depth = page.file.src_uri.count("/")
    in_repo = "../" * (depth + 1) + RESULTS + "/"
    in_site = "../" * depth + RESULTS + "/"
    return re.sub(r"(?<=[(\"'])" + re.escape(in_repo), in_site, markdown)
