"""MkDocs hooks of the documentation site (mkdocs.yml `hooks:`; `make docs` builds it).

1. The command-line page is generated from the typer app. docs/cli.md holds the marker
   `<!-- hpo-cli-reference -->`; at build time it is replaced by the Markdown that typer writes
   for `typer ... utils docs` (`typer.cli.get_docs_for_click`), run on `hpo.cli.app`: every
   command, argument and option with the help, defaults and environment variables that
   `hpo COMMAND --help` prints. Nothing of it is written by hand, so it cannot drift from
   `--help`. (The plugins mkdocs-click 0.9 and mkdocs-typer2 0.4 do not read typer 0.29, which
   carries its own copy of click: mkdocs-click drops every option, mkdocs-typer2's native engine
   fails on them, and its legacy engine shells out to `typer` and leaves the page empty when that
   fails.) A page without the marker, or an app typer cannot document, fails the build.
2. Links from a page to repository files outside the site (`../benchmarks/depth.py`,
   `../models/xray-cluster-mass`, a folder such as `results/gpu-store`) work on GitHub but have
   no page in the site: there they become their link text. A link whose target exists nowhere
   stays a link, and `mkdocs build --strict` fails on it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

CLI_PAGE = "cli.md"
CLI_MARKER = "<!-- hpo-cli-reference -->"

# [text](target), not an image; the target without spaces or a title.
_LINK = re.compile(r"(?<!!)\[([^\]\n]+)\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^\s*(```|~~~)")


def cli_reference() -> str:
    """The Markdown reference of `hpo` and every subcommand, as typer's own docs generator writes it."""
    import typer
    import typer.cli
    import typer.core

    from hpo.cli import app

    command = typer.main.get_command(app)
    ctx = typer.Context(command, info_name="hpo")
    ctx.ensure_object(dict)
    ctx.obj[typer.core.MARKUP_MODE_KEY] = app.rich_markup_mode  # as `typer utils docs` does
    # indent=1: the reference is a second-level heading ("Reference") under the page's title,
    # each command a third (`hpo launch`).
    docs = typer.cli.get_docs_for_click(obj=command, ctx=ctx, indent=1, name="hpo", title="Reference")
    return docs.strip() + "\n"


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if page.file.src_uri == CLI_PAGE:
        if CLI_MARKER not in markdown:
            raise ValueError(f"docs/{CLI_PAGE} lost its marker {CLI_MARKER}: the reference has no place")
        markdown = markdown.replace(CLI_MARKER, cli_reference())
    return _unlink_outside(markdown, page, config, files)


def _unlink_outside(markdown: str, page: Any, config: Any, files: Any) -> str:
    docs_dir = Path(config["docs_dir"]).resolve()
    repo = docs_dir.parent
    here = Path(page.file.abs_src_path).parent

    def replace(match: re.Match[str]) -> str:
        text, href = match.group(1), match.group(2)
        if href.startswith(("#", "/")) or re.match(r"^[a-z][a-z0-9+.-]*:", href):
            return match.group(0)  # an anchor, an absolute path or a URL: MkDocs judges it
        target = (here / href.split("#", 1)[0]).resolve()
        if target.is_relative_to(docs_dir) and target.is_file():
            found = files.get_file_from_path(target.relative_to(docs_dir).as_posix())
            if found is not None and not found.inclusion.is_excluded():
                return match.group(0)  # a page or a file of the site
        if target.is_relative_to(repo) and target.exists():
            return text  # a repository file or folder without a place in the site
        return match.group(0)  # broken: left for --strict to fail on

    lines, fenced = [], False
    for line in markdown.split("\n"):
        if _FENCE.match(line):
            fenced = not fenced
        lines.append(line if fenced else _LINK.sub(replace, line))
    return "\n".join(lines)
