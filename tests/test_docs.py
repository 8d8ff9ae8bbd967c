"""The docs: the site builds with --strict, the README stays a front page, and the examples in the docs run.

- `mkdocs build --strict` (what `make docs` runs): a broken link, a page missing from the nav, an unknown generated
  table or plot, or an API page whose object moved fails here.
- Every `iranker …` command line in a code block of the README or the docs is parsed by the real parser, so an
  option renamed in the code fails here until the docs say it the new way.
- The README's first calls (rank the sample; serve and call the rerank API) are run and answer what it shows.
- The README's tables (quality, transfer, templates, general ability) are the ones the renderer writes from the result files.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").rglob("*.md"))
FENCE = re.compile(r"^([ \t]*)```(\w*)[^\n]*\n(.*?)^\1```", re.MULTILINE | re.DOTALL)
SHELL_OPERATORS = {"&", "&&", "||", "|", ";", ">", ">>", "2>", "2>&1", "<"}
PLACEHOLDER = re.compile(r"[\[\]…]|\.\.\.|\w\|\w")


def code_blocks(path: Path) -> list[tuple[str, int, str]]:
    """(language, first line number, body) of every fenced block of a Markdown file."""
    text = path.read_text()
    return [(m.group(2), text.count("\n", 0, m.start()) + 2, m.group(3)) for m in FENCE.finditer(text)]


INLINE = re.compile(r"(?<!`)`((?:\.venv/bin/)?iranker [^`]+)`(?!`)")


def iranker_commands(path: Path) -> list[tuple[int, list[str], bool]]:
    """Every `iranker` command line in the shell blocks of a file, and every inline code span that is one, as
    (line, argv after `iranker`, whether it is a whole command line), joined over `\\` continuations and cut at the
    first shell operator. Lines with placeholders (`[--opt X]`, `a|b`, `…`) are synopses and are left out."""
    found = []
    text = path.read_text()
    blocks = code_blocks(path)
    prose = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)
    spans = [(prose.count("\n", 0, m.start()) + 1, m.group(1)) for m in INLINE.finditer(prose)]
    for lang, first, body in blocks + [("inline", n, span) for n, span in spans]:
        if lang not in ("bash", "sh", "console", "shell", "", "inline"):
            continue
        lines = body.replace("\\\n", " ").splitlines()
        for offset, line in enumerate(lines):
            line = line.strip().removeprefix("$ ").replace("`", "")
            try:
                tokens = shlex.split(line, comments=True)
            except ValueError:
                continue
            while tokens and re.match(r"^\w+=", tokens[0]):  # VAR=value prefixes
                tokens.pop(0)
            if not tokens or not tokens[0].endswith("iranker") or tokens[0].endswith("/iranker/"):
                continue
            argv = []
            for t in tokens[1:]:
                if t in SHELL_OPERATORS:
                    break
                argv.append(t)
            if any(PLACEHOLDER.search(t) for t in argv):
                continue
            found.append((first + offset, argv, lang != "inline"))
    return found


def test_the_docs_site_builds_with_strict(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                       cwd=ROOT, capture_output=True, text=True, env=env, timeout=600, check=False)
    assert r.returncode == 0, r.stderr[-4000:]
    site = tmp_path / "site"
    cli = (site / "reference" / "cli" / "index.html").read_text()
    from iranker.cli import build_parser

    # the CLI reference is the parser's: every option of every command is on the page
    for action in build_parser()._actions:
        if hasattr(action, "choices") and isinstance(action.choices, dict):
            for name in action.choices:
                assert f"iranker {name}".replace("evaluate-generic", "evaluate generic") in cli, name
    assert "--thought-templates" in cli and "--max-batch-tokens" in cli
    # the HTTP reference is the server's OpenAPI document, published beside it
    doc = json.loads((site / "reference" / "openapi.json").read_text())
    assert {"/v1/rerank", "/v1/models/{model_name}:predict", "/v2/models/{model_name}/infer",
            "/openai/v1/chat/completions"} <= set(doc["paths"])
    assert "/openai/v1/chat/completions" in (site / "reference" / "http" / "index.html").read_text()
    # the front page is the README
    assert "A first call, in seconds" in (site / "index.html").read_text()


def _known(parser, argv: list[str]) -> str | None:
    """What in argv the parser does not know: a command, or an option of the command it names (None: all known)."""
    import argparse

    for i, token in enumerate(argv):
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if token.startswith("-"):
            name = token.split("=", 1)[0]
            if name not in parser._option_string_actions:
                return f"option {name} of `{parser.prog}`"
        elif subs and i == len([t for t in argv[:i] if not t.startswith("-")]):
            if token not in subs[0].choices:
                return f"command {token!r} of `{parser.prog}`"
            parser = subs[0].choices[token]
    return None


def test_every_iranker_command_in_the_docs_names_real_commands_and_options_and_examples_parse():
    """Inline mentions (`iranker evaluate --orders …`) must name commands and options that exist; a command line in
    a code block must also parse, arguments and all."""
    from iranker.cli import build_parser

    failures, checked = [], 0
    for path in [README, *DOCS]:
        for line, argv, whole in iranker_commands(path):
            if argv[:2] == ["evaluate", "generic"]:
                argv = ["evaluate-generic", *argv[2:]]
            checked += 1
            where = f"{path.relative_to(ROOT)}:{line}: iranker {shlex.join(argv)}"
            unknown = _known(build_parser(), argv)
            if unknown:
                failures.append(f"{where} ({unknown} does not exist)")
                continue
            if whole:
                try:
                    build_parser().parse_args(argv)
                except SystemExit as e:
                    if e.code:
                        failures.append(f"{where} (refused by the parser)")
    assert checked > 60, checked  # the extraction finds the docs' examples
    assert not failures, "commands in the docs that the CLI does not have:\n" + "\n".join(failures)


def test_the_command_extraction_reads_continuations_and_skips_synopses(tmp_path):
    md = tmp_path / "x.md"
    md.write_text("text\n\n```bash\niranker rank x.json \\\n    --top-k 3   # a comment\n"
                  "iranker serve [--model DIR|NAME]\nVAR=1 .venv/bin/iranker demo --limit 2 > out.txt\n```\n")
    assert iranker_commands(md) == [(4, ["rank", "x.json", "--top-k", "3"], True), (6, ["demo", "--limit", "2"], True)]
    md.write_text("Run `iranker evaluate --orders first-stage` or ``iranker x`` here.\n")
    assert iranker_commands(md) == [(1, ["evaluate", "--orders", "first-stage"], False)]


def test_the_readme_is_a_front_page_linking_into_the_docs():
    text = README.read_text()
    assert len(text.encode()) <= 12_000, "the README is a front page: move the detail into docs/"
    links = re.findall(r"\]\(([^)#]+)\)", text)
    assert any(link.startswith("docs/") for link in links)
    for link in links:
        if "://" not in link:
            assert (ROOT / link).exists(), f"README links to {link}, which does not exist"


@pytest.mark.parametrize("name", ["quality", "transfer", "templates", "generic"])
def test_the_readme_tables_are_rendered_from_their_result_files(name):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import render_results

    assert render_results.table(name).strip() in README.read_text()


def _json_after(text: str, anchor: str) -> dict:
    """The first ```json block after `anchor` in the text."""
    rest = text[text.index(anchor):]
    m = re.search(r"```json\n(.*?)```", rest, re.DOTALL)
    return json.loads(m.group(1).replace('"…"', '"x"'))


@pytest.fixture(scope="module")
def embedded_model():
    from iranker.models import embedded_model_dir

    if not (embedded_model_dir() / "iranker-model.json").exists():
        pytest.skip("embedded model not pulled: run `iranker model pull` (make test does)")


@pytest.mark.slow
def test_the_readme_first_call_prints_what_the_readme_shows(embedded_model, tmp_path):
    text = README.read_text()
    r = subprocess.run([sys.executable, "-m", "iranker.cli", "rank", "samples/request.json"], cwd=ROOT, check=False,
                       capture_output=True, text=True, timeout=600, env={**os.environ, "IRANKER_REGISTRY":
                                                                         str(tmp_path / "registry")})
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout) == _json_after(text, "iranker rank samples/request.json")


@pytest.mark.slow
def test_the_readme_rerank_call_answers_what_the_readme_shows(embedded_model, tmp_path):
    text = README.read_text()
    [body] = [b for lang, _, b in code_blocks(README) if "iranker serve" in b and "/v1/rerank" in b]
    call = body.replace("\\\n", " ")
    curl = shlex.split(call[call.index("curl -s localhost:8080/v1/rerank"):])
    payload, url = curl[curl.index("-d") + 1], next(t for t in curl if t.startswith("localhost:8080/"))
    from test_serving import Server  # the suite's real `iranker serve` on loopback

    server = Server("--no-features", env={"IRANKER_REGISTRY": str(tmp_path / "registry")})
    try:
        answer = httpx.post(server.url + url.removeprefix("localhost:8080"), content=payload,
                            headers={"Content-Type": "application/json"}, timeout=300).json()
    finally:
        server.close()
    shown = _json_after(text, "curl -s localhost:8080/v1/rerank")
    assert answer["results"] == shown["results"]
    assert answer["usage"] == shown["usage"] and answer["model"] == shown["model"] == "iranker"


@pytest.mark.slow
@pytest.mark.parametrize("page", ["reference/python.md", "guides/ranking.md"])
def test_the_python_examples_run_and_print_what_they_say(embedded_model, page):
    """A page's first Python example, run as written (the embedded model): it prints a ranking, and where the
    example says in a comment what it prints, that is what it prints."""
    import ast

    code = next(body for lang, _, body in code_blocks(ROOT / "docs" / page) if lang == "python")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600,
                       check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    printed = ast.literal_eval(r.stdout.strip())
    said = re.search(r"print\(response\.ranking\)\s+# (\[[^\]]*\])", code)
    if said:
        assert printed == ast.literal_eval(said.group(1))
    else:
        assert sorted(printed) == ["a", "b"]
