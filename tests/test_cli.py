"""The `iranker` command as users run it (a subprocess), on the tiny model saved as a folder."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import ROOT, SAMPLES


def run(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "iranker.cli", *args], capture_output=True, text=True, input=stdin,
                          timeout=300, check=False)


def test_rank_help_shows_an_example_request():
    out = run("rank", "--help")
    assert out.returncode == 0
    example = out.stdout[out.stdout.index('{\n  "scenario"'): out.stdout.index("scenario: recommendation")]
    assert json.loads(example) == json.loads((ROOT / "samples" / "request.json").read_text())


def test_rank_prints_a_rank_response(tmp_path, tiny_model_dir):
    req = {"scenario": "routing", "query": "2+2?", "preference": "cost",
           "candidates": [{"id": "gpt-4", "text": "strong, expensive"}, {"id": "mistral-7b", "text": "cheap"},
                          {"id": "llama-70b", "text": "medium"}], "top_k": 2}
    path = tmp_path / "req.json"
    path.write_text(json.dumps(req))
    out = run("rank", str(path), "--model", str(tiny_model_dir))
    assert out.returncode == 0, out.stderr
    resp = json.loads(out.stdout)
    assert len(resp["ranking"]) == 2 and set(resp["ranking"]) <= {"gpt-4", "mistral-7b", "llama-70b"}
    assert resp["usage"]["llm_calls"] == 2 and resp["parse_failures"] == 0
    assert [e["step"] for e in resp["eliminated"]] == [1, 2]


def test_rank_reads_a_list_from_stdin(tiny_model_dir):
    reqs = [{"scenario": "passage", "query": "q", "candidates": [{"id": "a", "text": "x"}, {"id": "b", "text": "y"}]},
            {"scenario": "recommendation", "history": ["Heat (1995)"],
             "candidates": [{"id": "1", "text": "Ronin (1998)"}, {"id": "2", "text": "Babe (1995)"}]}]
    out = run("rank", "-", "--model", str(tiny_model_dir), "--layout", "relist", stdin=json.dumps(reqs))
    assert out.returncode == 0, out.stderr
    assert [sorted(r["ranking"]) for r in json.loads(out.stdout)] == [["a", "b"], ["1", "2"]]


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON (line 1"),
    (json.dumps({"scenario": "routing", "query": "q", "candidates": [{"id": "a", "text": "x"}]}), "preference"),
    (json.dumps({"scenario": "passage", "query": "q", "candidates": []}), "candidates"),
    (json.dumps([{"scenario": "passage", "query": "q", "candidates": [{"id": "a", "text": "x"}]}, 3]),
     "[1]: expected a JSON object"),
])
def test_bad_requests_exit_non_zero_naming_the_problem(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    out = run("rank", str(path), "--model", "/nonexistent-never-loaded")
    assert out.returncode == 2 and message in out.stderr and out.stdout == ""


def test_missing_model_folder_is_a_clear_error(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"scenario": "passage", "query": "q", "candidates": [{"id": "a", "text": "x"}]}))
    out = run("rank", str(path), "--model", "./no-such-model")
    assert out.returncode == 1 and "no such folder" in out.stderr


def test_demo_scores_every_scenario_beside_random(tiny_model_dir):
    out = run("demo", "--model", str(tiny_model_dir), "--instances", str(SAMPLES))
    assert out.returncode == 0, out.stderr
    scores = json.loads(out.stdout)["scenarios"]
    assert set(scores) == {"passage", "recommendation", "routing"}
    for s in scores.values():
        assert 0 < s["random"]["mrr"] < 1 and 0 <= s["metrics"]["mrr"] <= 1 and s["parse_failure_rate"] == 0
    assert "(random)" in out.stderr


def test_print_prompts_shows_each_requests_first_prompt_as_the_model_sees_it(tmp_path, tiny_model_dir):
    long_query = "Worked example one. " * 200 + "Which planet is closest to the Sun? Answer:"
    reqs = [{"scenario": "routing", "query": long_query, "preference": "cost",
             "candidates": [{"id": "m1", "text": "a small model", "features": {"price": 0.0002, "quality": 0.61}},
                            {"id": "m2", "text": "a large model", "features": {"price": 0.03, "quality": 0.92}}]},
            {"scenario": "passage", "query": "q", "options": {"method": "direct"},
             "candidates": [{"id": "a", "text": "x"}, {"id": "b", "text": "y"}]}]
    out = run("rank", "-", "--model", str(tiny_model_dir), "--print-prompts", stdin=json.dumps(reqs))
    assert out.returncode == 0, out.stderr
    assert len(json.loads(out.stdout)) == 2
    first = out.stderr.split("----- request 0: first step's prompt, as the model is shown it -----\n")[1]
    first = first.split("----- end of request 0's prompt -----")[0]
    assert "Which planet is closest to the Sun? Answer:" in first and first.count("Worked example one.") < 70
    assert "[A] a small model \u00b7 quality 61% \u00b7 $200 per 1M queries" in first
    assert first.rstrip("\n").endswith("assistant\n[")  # fast mode: ends where the label is read
    second = out.stderr.split("----- request 1: first step's prompt")[1]
    assert "rank ALL passages" in second


def test_a_missing_model_folder_is_one_line_and_leaves_nothing_behind(tmp_path):
    for args in (["rank", str(ROOT / "samples" / "request.json")],
                 ["evaluate", "--data", "samples", "--out", str(tmp_path / "report"), "--baselines", ""]):
        out = run(*args, "--model", "missing/")
        assert out.returncode == 1
        assert out.stderr.strip().splitlines()[-1] == \
            "iranker: error: --model missing/: no such folder (and not a Hugging Face id such as org/name)"
        assert "Traceback" not in out.stderr
    assert not (tmp_path / "report").exists()


def test_every_option_has_help_that_names_its_default():
    """Each argument of every command says what it is, and each option with a default says the default."""
    import argparse

    from iranker.cli import build_parser

    def walk(parser, path):
        for a in parser._actions:
            if isinstance(a, argparse._SubParsersAction):
                for name, sp in a.choices.items():
                    yield from walk(sp, [*path, name])
            elif not isinstance(a, (argparse._HelpAction, argparse._VersionAction)):
                yield " ".join(path), a

    missing = []
    for command, a in walk(build_parser(), []):
        name = "/".join(a.option_strings) or a.dest
        if not a.help:
            missing.append(f"{command} {name}: no help")
        elif a.option_strings and a.default not in (None, False, [], argparse.SUPPRESS) and \
                "default" not in a.help.lower():
            missing.append(f"{command} {name}: default {a.default!r} not in its help")
    assert missing == []
