"""One Kubeflow Pipelines component per step. Each one calls an `iranker.pipeline` function and records what that
function returns (data version, code version, parameters) in its output artifact's metadata.

On a cluster the components run in the project's image (`IRANKER_IMAGE` at compile time; it carries iranker and
kfp, so nothing is pip-installed at run time); `kfp.local` runs them as subprocesses of the current environment.
"""


import os

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Markdown, Metrics, Model, Output

from iranker import __version__

IMAGE = os.environ.get("IRANKER_IMAGE", f"ghcr.io/iranker/iranker:{__version__}")


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def ingest(source: str, path: str, params: dict, data_dir: str, name: str, dvc: bool, dataset: Output[Dataset]):
    """Read a public source, validate it (Great Expectations), write data_dir/name, DVC add + push."""
    from iranker.logs import setup
    from iranker.pipeline import ingest_step

    setup()  # the steps' progress lines, in the step's log
    dataset.metadata.update(ingest_step(source, path, params, data_dir, name, dataset.path, dvc=dvc))


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def ingest_feedback(path: str, params: dict, data_dir: str, dvc: bool, dataset: Output[Dataset]) -> str:
    """The served calls and outcomes of a collector's store as a validated, DVC-tracked dataset (none when path is
    empty). Returns its data version ("" when none)."""
    from iranker.logs import setup
    from iranker.pipeline import feedback_step

    setup()  # the steps' progress lines, in the step's log
    result = feedback_step(path, params, data_dir, dataset.path, dvc=dvc)
    dataset.metadata.update(result)
    return result["data_version"]


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def validate(dataset: Input[Dataset], report: Output[Markdown]) -> str:
    """Great Expectations suites on the dataset; fails the run when an expectation fails. Returns the data version."""
    from iranker.logs import setup
    from iranker.pipeline import validate_step

    setup()  # the steps' progress lines, in the step's log
    summary = validate_step(dataset.path, report.path)
    report.metadata.update(summary)
    return summary["data_version"]


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def build_features(dataset: Input[Dataset], routing: Input[Dataset], feature_repo: str, features: Output[Artifact]):
    """Feast: write the user-context and candidate-feature sources, apply, materialize into the online store."""
    import json

    from iranker.logs import setup
    from iranker.pipeline import features_step

    setup()  # the steps' progress lines, in the step's log
    result = features_step(dataset.path, feature_repo, routing.path)
    features.metadata.update(result)
    with open(features.path, "w") as f:
        json.dump(result, f, indent=1)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def train(recommendation: Input[Dataset], routing: Input[Dataset], passage: Input[Dataset], feedback: Input[Dataset],
          recommendation_version: str, routing_version: str, passage_version: str, feedback_version: str,
          profile: str, overrides: dict, runs_dir: str, templates_k: int, model: Output[Model]):
    """PPO on elimination steps of the three scenarios' training splits and the feedback's, if any (one model);
    `templates_k` > 0: the model is saved to be shown that many of its own thought templates per request."""
    from iranker.logs import setup
    from iranker.pipeline import train_step

    setup()  # the steps' progress lines, in the step's log
    result = train_step(profile, [recommendation.path, routing.path, passage.path, feedback.path],
                        [recommendation_version, routing_version, passage_version, feedback_version], overrides,
                        runs_dir, model.path, templates_k=templates_k)
    model.metadata.update(result)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def evaluate(recommendation: Input[Dataset], routing: Input[Dataset], passage: Input[Dataset],
             feedback: Input[Dataset], model: Input[Model], registry: str, limit: int, baselines: list,
             evaluation: Output[Artifact], metrics: Output[Metrics], report: Output[Markdown]):
    """Candidate vs production (or the base model) and the simple baselines on the test splits (the feedback's: its
    latest users and queries, held out). The report artifact carries its plots inline, so the UI shows them."""
    from pathlib import Path

    from iranker.evaluate.report import inline_images
    from iranker.logs import setup
    from iranker.pipeline import evaluate_step

    setup()  # the steps' progress lines, in the step's log
    result = evaluate_step([recommendation.path, routing.path, passage.path, feedback.path], model.path,
                           model.metadata["base_model"], registry, evaluation.path, limit=limit,
                           baselines=[str(b) for b in baselines])
    evaluation.metadata.update({**result, "code_version": model.metadata.get("code_version"),
                                "data_version": model.metadata.get("data_version")})
    for name, value in result["primary"].items():
        metrics.log_metric(name.replace("/", "."), float(value))
    Path(report.path).write_text(inline_images(Path(evaluation.path, "report.md").read_text(), evaluation.path))


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def evaluate_generic(model: Input[Model], tasks: str, limit: int, data_dir: str, generic: Output[Artifact]):
    """General ability (lm-evaluation-harness): the candidate against its base model on the same documents; an
    artifact marked NO_DATA when no tasks are given."""
    from iranker.logs import setup
    from iranker.pipeline import generic_step

    setup()  # the steps' progress lines, in the step's log
    generic.metadata.update(generic_step(model.path, model.metadata["base_model"], tasks, limit, data_dir,
                                         generic.path))


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def promote(model: Input[Model], evaluation: Input[Artifact], generic: Input[Artifact], registry: str,
            manifests_dir: str, tolerance: float, min_gain: float, generic_tolerance: float,
            decision: Output[Markdown]) -> bool:
    """The promotion gate: register and point production at the candidate only when it is not worse on any scenario
    beyond the tolerance and better on the pooled primary metric (paired intervals), and, when general ability was
    checked, no task may have dropped below the base beyond generic_tolerance. Returns the decision."""
    from iranker.logs import setup
    from iranker.pipeline import present, promote_step

    setup()  # the steps' progress lines, in the step's log
    card = {k: model.metadata.get(k) for k in ("base_model", "profile", "params", "data_version", "code_version",
                                               "run")}
    result = promote_step(model.path, evaluation.path, registry, manifests_dir, card, tolerance=tolerance,
                          min_gain=min_gain, report=decision.path,
                          generic=(present([generic.path]) or [None])[0], generic_tolerance=generic_tolerance)
    decision.metadata.update({k: v for k, v in result.items() if k != "decision"})
    return bool(result["promoted"])
