"""The evaluation report: Markdown tables (every system on the same instances) and PNG plots."""

from __future__ import annotations

import json
from pathlib import Path

REPORTED = ("mrr", "ndcg@10", "ndcg@3", "hit@1")


def _cell(value: float, interval: list[float] | None) -> str:
    return f"{value:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else f"{value:.3f}"


def group_table(res: dict) -> str:
    """One (dataset, scenario) group: the evaluated system first, then the model baselines, then the rest."""
    head = "| system | " + " | ".join(m.upper() if m == "mrr" else m.replace("ndcg", "NDCG").replace("hit", "Hit")
                                     for m in REPORTED) + " | parse failures |"
    lines = [head, "|" + "---|" * (len(REPORTED) + 2)]
    systems = [(res["system"], res["metrics"], res["intervals"])] if res["metrics"] else []
    systems += [(n, v, res["baseline_intervals"].get(n)) for n, v in res["baselines"].items()]
    for name, values, intervals in systems:
        pf = res["parse_failures"].get(name)
        pf_cell = f"{pf['parse_failures']}/{pf['decisions']} ({pf['rate']:.1%})" if pf else "-"
        label = f"**{name}**" if name == res["system"] else name
        cells = " | ".join(_cell(values[m], None if name.startswith("random") else (intervals or {}).get(m))
                           for m in REPORTED)
        lines.append(f"| {label} | {cells} | {pf_cell} |")
    return "\n".join(lines)


def comparison_line(res: dict) -> str:
    c = res.get("comparison") or {}
    if not c:
        return ""
    m = res["primary_metric"]
    parts = []
    for metric in dict.fromkeys([m, "mrr"]):
        d = c[metric]
        verdict = "better" if d["low"] > 0 else "worse" if d["high"] < 0 else "no significant difference"
        parts.append(f"{metric}: {d['diff']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}] ({d['relative']:+.1%} relative, "
                     f"p = {d['p_value']:.3g}, wins/losses/ties {d['wins']}/{d['losses']}/{d['ties']}) - {verdict}")
    return f"{c['system']} vs {c['against']} (paired, 95% bootstrap interval): " + "; ".join(parts)


def summary_table(metrics: dict) -> str:
    """One line per group: primary metric and MRR of the evaluated system, the base and the best baseline (the base
    column and the paired difference only where the evaluated system is not the base itself)."""
    against_base = metrics["system"] != "base (iterative)"
    lines = [("| dataset | scenario | n | metric | random | best simple baseline | "
              + ("base (iterative) | " if against_base else "") + f"{metrics['system']} |"
              + (" paired difference [95% interval] |" if against_base else "")),
             "|" + "---|" * (9 if against_base else 7)]
    for r in metrics["results"]:
        for m in dict.fromkeys([r["primary_metric"], "mrr"]):
            simple = {n: v[m] for n, v in r["baselines"].items() if not n.startswith(("base", "random"))}
            best = max(simple, key=simple.get) if simple else None
            base = r["baselines"].get("base (iterative)", {}).get(m)
            c = (r.get("comparison") or {}).get(m)
            lines.append(
                f"| {r['dataset']} | {r['scenario']} | {r['n_instances']} | {m} | "
                f"{r['baselines']['random (expected)'][m]:.3f} | "
                + (f"{simple[best]:.3f} ({best})" if best else "-") + " | "
                + ((f"{base:.3f}" if base is not None else "-") + " | " if against_base else "")
                + f"{r['metrics'].get(m, 0):.3f} |"
                + ((f" {c['diff']:+.3f} [{c['low']:+.3f}, {c['high']:+.3f}] |" if c else " - |")
                   if against_base else ""))
    return "\n".join(lines)


def write_report(metrics: dict, out: Path, train_run: str | Path | None = None) -> None:
    from iranker.evaluate import PUBLISHED_DL19

    plots = write_plots(metrics, out, train_run)
    md = [f"# Evaluation: {metrics['system']} ({metrics['model']})", "",
          (f"Instances: {metrics['n_instances']} from {', '.join(metrics['sources'])}. Base model: "
          f"{metrics['base']}. Candidate texts capped at {metrics['max_words']} words. Intervals are 95% "
          "bootstrap intervals over instances; `random (expected)` is the exact expectation of a random order."),
          "", "## Summary", "", summary_table(metrics), ""]
    shown = metrics.get("thought_templates")
    if shown:
        md[-3:-3] = [(f"Thought templates: {shown['shown_to']} is shown the {shown['templates_k']} nearest of the "
                      f"{shown['thoughts']} thoughts in `{shown['store']}` with each request; the other model "
                      "systems are shown none."), ""]
    for r in metrics["results"]:
        domain = f", {r['domain']}" if r.get("domain") else ""  # zero-shot transfer: trained on other scenarios
        md += [(f"## {r['dataset']} · {r['scenario']} ({r['n_instances']} instances, {r['candidates']} candidates"
               f"{domain})"),
               "", group_table(r), ""]
        line = comparison_line(r)
        if line:
            md += [line, ""]
        if r["scenario"] == "passage":
            md += ["nDCG@10 is computed against " + ("every judged passage of the query (trec_eval's ideal)"
                                                     if r["qrels"].startswith("full") else
                                                     "the judged candidates of the instance only")
                   + ". Published TREC DL 2019 figures: "
                   + ", ".join(f"{k} {v:.4f}" for k, v in PUBLISHED_DL19.items()) + ".", ""]
        plot = plots.get((r["dataset"], r["scenario"]))
        if plot:
            md += [f"![{r['dataset']} {r['scenario']}]({plot})", ""]
    if "training" in plots:
        md += ["## Training", "", f"![reward]({plots['training']})", ""]
    (out / "report.md").write_text("\n".join(md))


def inline_images(markdown: str, folder: str | Path) -> str:
    """The report with each `![alt](file.png)` that names a file in `folder` embedded as a data URI, so that a viewer
    that shows only the Markdown (a Kubeflow Pipelines Markdown artifact) shows the plots too."""
    import base64
    import re

    def embed(m: re.Match) -> str:
        path = Path(folder) / m.group(2)
        if not path.is_file():
            return m.group(0)
        return f"![{m.group(1)}](data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()})"

    return re.sub(r"!\[([^\]]*)\]\(([^)\s]+\.png)\)", embed, markdown)


def write_plots(metrics: dict, out: Path, train_run: str | Path | None = None) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files: dict = {}
    for r in metrics["results"]:
        m = r["primary_metric"]
        names = ([r["system"]] if r["metrics"] else []) + list(r["baselines"])
        values = [r["metrics"][m] if n == r["system"] else r["baselines"][n][m] for n in names]
        ivs = [r["intervals"].get(m) if n == r["system"] else r["baseline_intervals"].get(n, {}).get(m)
               for n in names]
        err = [[max(0.0, v - i[0]) if i else 0 for v, i in zip(values, ivs, strict=True)],
               [max(0.0, i[1] - v) if i else 0 for v, i in zip(values, ivs, strict=True)]]
        fig, ax = plt.subplots(figsize=(8, 0.45 * len(names) + 1.2))
        colors = ["tab:red" if n == r["system"] else "tab:orange" if n.startswith("base") else
                  "tab:gray" if n.startswith("random") else "tab:blue" for n in names]
        ax.barh(range(len(names)), values, xerr=err, color=colors, capsize=3)
        ax.set_yticks(range(len(names)), names)
        ax.invert_yaxis()
        ax.set_xlabel(f"{m} (95% bootstrap interval)")
        ax.set_title(f"{r['dataset']} · {r['scenario']} · {r['n_instances']} instances")
        fig.tight_layout()
        name = f"plot-{r['dataset']}-{r['scenario']}.png".replace("/", "_")
        fig.savefig(out / name, dpi=100)
        plt.close(fig)
        files[(r["dataset"], r["scenario"])] = name
    if train_run is not None:
        rows = [json.loads(x) for x in (Path(train_run) / "metrics.jsonl").read_text().splitlines() if x.strip()]
        if rows:
            steps = [x["step"] for x in rows]
            fig, ax = plt.subplots(figsize=(8, 4))
            for key in ("reward", "expected_reward"):
                ys = [x[key] for x in rows]
                w = max(1, len(ys) // 20)
                smooth = [sum(ys[max(0, i - w + 1): i + 1]) / len(ys[max(0, i - w + 1): i + 1])
                          for i in range(len(ys))]
                ax.plot(steps, ys, alpha=0.25)
                ax.plot(steps, smooth, label=f"{key} (moving mean of {w})")
            probe_path = Path(train_run) / "probe.jsonl"
            if probe_path.exists():
                probes = [json.loads(x) for x in probe_path.read_text().splitlines() if x.strip()]
                for key in sorted({k for p in probes for k in p if k not in ("step", "first_label")}):
                    pts = [(p["step"], p[key]) for p in probes if p.get(key) is not None]
                    label = ("held-out probe: uniform random choice, same pools" if key == "random"
                             else f"held-out probe: {key} (exact expectation)")
                    ax.plot(*zip(*pts, strict=True), marker="" if key == "random" else "o",
                            linestyle=":" if key == "random" else "--", label=label)
            ax.set_xlabel("update")
            ax.set_ylabel("exclusion reward per elimination step")
            ax.legend()
            fig.tight_layout()
            fig.savefig(out / "plot-training-reward.png", dpi=100)
            plt.close(fig)
            files["training"] = "plot-training-reward.png"
    return files
