"""MkDocs hooks: what the docs show is generated from the code and the result files at build time, not copied.

Markers a page may hold (each on a line of its own):

- `<!-- readme -->`: the repository's README.md (the front page), its links made relative to the site;
- `<!-- cli-reference -->`: every `iranker` command's `--help`, from `iranker.cli.build_parser()`;
- `<!-- http-reference -->`: the server's routes, from its OpenAPI document (`serving.server.openapi_document`),
  which is also published beside the page as `openapi.json`;
- `<!-- profiles -->`: the training profiles in `configs/*.yaml`, as they are;
- `<!-- table: NAME -->`: a benchmark table, rendered by `benchmarks/render_results.py` from `benchmarks/results/`;
- `<!-- plot: NAME -->`: a benchmark plot drawn by the same script into the site.

An unknown marker name fails the build (the docs are built with --strict).
"""

from __future__ import annotations

import argparse
import json
import os
import posixpath
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # serving/ is imported from the checkout
    sys.path.insert(0, str(ROOT))


def _render():
    """benchmarks/render_results.py, imported from its file (benchmarks/ is not a package, and a sys.path entry
    added here was not seen by the page hooks under MkDocs 1.6)."""
    import importlib.util

    if "render_results" not in sys.modules:
        spec = importlib.util.spec_from_file_location("render_results", ROOT / "benchmarks" / "render_results.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["render_results"] = module
        spec.loader.exec_module(module)
    return sys.modules["render_results"]


MARKER = re.compile(r"^([ \t]*)<!-- (readme|cli-reference|http-reference|profiles|table: [\w-]+|plot: [\w-]+) -->$", re.MULTILINE)
PLOTS_DIR = "plots"
_plots: dict[str, str] = {}  # plot name -> its path in the site


def on_files(files, config):
    """Draw every plot a page asks for, and publish the OpenAPI document, as generated files of the site."""
    from mkdocs.structure.files import File

    wanted = set()
    for f in files.documentation_pages():
        wanted.update(re.findall(r"^[ \t]*<!-- plot: ([\w-]+) -->$", Path(f.abs_src_path).read_text(), re.MULTILINE))
    if wanted:
        render_results = _render()
        with tempfile.TemporaryDirectory(prefix="iranker-docs-plots-") as out:
            for name in sorted(wanted):
                if name not in render_results.PLOTS:
                    raise ValueError(f"docs: unknown plot {name!r} (benchmarks/render_results.py has "
                                     f"{sorted(render_results.PLOTS)})")
                png = Path(out) / f"{name}.png"
                render_results.plot(name, png)
                uri = f"{PLOTS_DIR}/{name}.png"
                files.append(File.generated(config, uri, content=png.read_bytes()))
                _plots[name] = uri
    files.append(File.generated(config, "reference/openapi.json", content=json.dumps(_openapi(), indent=1)))
    # the log of every benchmark run (benchmarks/RESULTS.md, kept beside the result files) as a page of its own
    files.append(File.generated(config, "run-log.md", content=(ROOT / "benchmarks" / "RESULTS.md").read_text()))
    return files


def on_page_markdown(markdown, page, config, files):
    def fill(match: re.Match) -> str:  # a marker inside a list item is indented: so is what replaces it
        indent = match.group(1)
        return "\n".join(indent + line if line else line for line in generate(match.group(2)).splitlines())

    def generate(what: str) -> str:
        if what == "readme":
            return readme()
        if what == "cli-reference":
            return cli_reference()
        if what == "http-reference":
            return http_reference()
        if what == "profiles":
            return profiles()
        kind, name = what.split(": ")
        if kind == "table":
            render_results = _render()
            if name not in render_results.TABLES:
                raise ValueError(f"docs/{page.file.src_uri}: unknown table {name!r} (benchmarks/render_results.py "
                                 f"has {sorted(render_results.TABLES)})")
            return render_results.table(name)
        rel = posixpath.relpath(_plots[name], posixpath.dirname(page.file.src_uri) or ".")
        return f"![{name}]({rel})"

    return MARKER.sub(fill, markdown)


def readme() -> str:
    text = (ROOT / "README.md").read_text()
    text = text.replace("](docs/", "](").replace("](benchmarks/RESULTS.md)", "](run-log.md)")
    return text


def _commands(parser: argparse.ArgumentParser, prefix: str):
    """(command line, parser) for the parser and every subcommand below it, depth first, in declaration order."""
    yield prefix, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                if sub is not parser:
                    yield from _commands(sub, f"{prefix} {name}")


def cli_reference() -> str:
    from iranker.cli import build_parser

    parts, seen = [], set()
    columns = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "110"  # argparse wraps to the terminal: a fixed width makes the page reproducible
    try:
        commands = [(line, parser, parser.format_help()) for line, parser in _commands(build_parser(), "iranker")]
    finally:
        if columns is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = columns
    for line, parser, text in commands:
        if id(parser) in seen:  # aliases
            continue
        seen.add(id(parser))
        if line == "iranker evaluate-generic":
            line = "iranker evaluate generic"  # how users type it (iranker.cli.main maps it)
        text = text.replace("usage: iranker evaluate-generic", "usage: iranker evaluate generic")
        depth = min(line.count(" ") + 2, 4)
        parts.append(f"{'#' * depth} `{line}`\n\n```text\n{text.rstrip()}\n```\n")
    return "\n".join(parts)


_openapi_cache: dict = {}


def _openapi() -> dict:
    if not _openapi_cache:
        from serving.server import openapi_document

        _openapi_cache.update(openapi_document())
    return _openapi_cache


def http_reference() -> str:
    doc = _openapi()
    rows = ["| method | path | what | tag |", "|---|---|---|---|"]
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            rows.append(f"| {method.upper()} | `{path}` | {op.get('summary', '')} | {', '.join(op.get('tags', []))} |")
    return "\n".join(rows) + "\n"


def profiles() -> str:
    parts = []
    for f in sorted((ROOT / "configs").glob("*.yaml")):
        parts.append(f"### `{f.stem}`\n\n`configs/{f.name}`:\n\n```yaml\n{f.read_text().rstrip()}\n```\n")
    return "\n".join(parts)
