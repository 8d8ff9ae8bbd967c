# Two commands do everything on a fresh machine:  make demo  ·  make test
# Both create .venv/, install the CPU torch wheel, the project with its extras, and the embedded model.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check
TORCH  ?= torch==2.13.0
EXTRAS ?= data,train,eval,serve,pipelines,dev
LOCK   := constraints.txt
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml $(LOCK) | cksum | cut -d' ' -f1)
export DVC_NO_ANALYTICS=1 GX_ANALYTICS_ENABLED=false HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false

.PHONY: install model data test test-fast demo bench bench-train bench-serve serve clean lock

# Every version installed is pinned by constraints.txt (refresh it on purpose with `make lock`).
$(STAMP): pyproject.toml $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first, pinned: the CPU wheel on laptops and CI; a later unpinned torch would pull CUDA packages.
	$(PIP) install -q -c $(LOCK) $(TORCH)
	$(PIP) install -q -c $(LOCK) -e ".[$(EXTRAS)]"
	rm -f $(VENV)/.installed-* && touch $@

# Re-resolve the ranges of pyproject.toml in a fresh environment and pin what it installed into constraints.txt.
lock:
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install -q $(TORCH) && .venv-lock/bin/pip install -q -e ".[$(EXTRAS)]"
	{ sed -n '1,3p' $(LOCK); .venv-lock/bin/pip freeze --exclude-editable | grep -v '^-e '; } > $(LOCK).new
	mv $(LOCK).new $(LOCK) && rm -rf .venv-lock

install: $(STAMP)

model: install
	$(VENV)/bin/iranker model pull

# The built-in samples (public formats) ingested into data/, validated, tracked by data.dvc, pushed to the DVC remote.
data: install
	$(VENV)/bin/iranker data ingest recbole samples/recbole --out data/samples/recommendation
	$(VENV)/bin/iranker data ingest trec-dl samples/trec-dl --out data/samples/passage
	$(VENV)/bin/iranker data ingest routerbench samples/routerbench --out data/samples/routing

test: install model
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow"

# The Kubeflow pipeline on the built-in samples, run locally by kfp.local: ingest (DVC), validate (Great
# Expectations), Feast features, a few PPO updates of the embedded model, evaluation, promotion gate.
demo: install model
	$(VENV)/bin/iranker pipeline run --local --profile demo \
	    --param 'recommendation_params={split: "train:0.5,test:0.5"}'

bench: install model
	$(PY) benchmarks/bench_rank.py

# Base vs PPO-trained on the held-out test splits (trains the cpu profile first, ~40 min on 2 cores; see README).
bench-train: install model
	$(PY) benchmarks/bench_train_quality.py

# The ranking service under load: 8 concurrent clients vs the same requests one at a time (see README).
bench-serve: install model
	$(PY) benchmarks/bench_serve.py

serve: install model
	$(VENV)/bin/iranker serve

clean:
	rm -rf $(VENV) .pytest_cache
