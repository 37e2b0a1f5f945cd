# recsys: make targets for the engineer's loop. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Optional extra index for pip, e.g. https://download.pytorch.org/whl/cpu to get the CPU torch wheel
# on a machine where PyPI's default Linux torch is the multi-GB CUDA build.
TORCH_INDEX ?=
PIP_INDEX_FLAGS := $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX),)
# The local SageMaker-shaped tree that `make run` trains in.
LOCAL_ML ?= local/opt_ml
# The bundled data of `make run`, outside the tree: `recsys train --train` links it in, as it links
# your own files (so a later `recsys train --train YOURS` may replace the tree's links).
LOCAL_DATA ?= local/data
# Container image: tag and base (BASE_IMAGE=local/bookworm-python:latest where Docker Hub is out of reach).
IMAGE ?= recsys:latest
BASE_IMAGE ?= python:3.11-slim-bookworm
# SageMaker's GPU and x86 CPU instances run linux/amd64 images: built as such even on an arm64 laptop.
PLATFORM ?= linux/amd64
PORT ?= 8080
# The containers of local-train, local-serve and bench-image run as the calling user, so that what
# they write under LOCAL_ML stays the caller's (`make run` removes it). DOCKER_USER= (empty) runs them
# as the image's default user, root, as SageMaker does.
DOCKER_USER ?= $(shell id -u):$(shell id -g)
DOCKER_USER_FLAG = $(if $(DOCKER_USER),--user $(DOCKER_USER))
# The name of local-serve's container.
SERVE_CONTAINER ?= recsys-local-serve
# ECR: `make push` sends IMAGE to REPOSITORY (created if missing) in REGION, with PROFILE's credentials;
# empty REGION / PROFILE mean the AWS configuration's (AWS_REGION, AWS_PROFILE, ~/.aws/config).
REPOSITORY ?= recsys
REGION ?=
PROFILE ?=

# The legacy builder keeps each earlier stage of a multi-stage build as an untagged image. The
# torch-cpu stage (the CPU variant's 1.07 GB torch install) is built first under its own tag,
# TORCH_STAGE, so that it stays, named, as the next build's cache instead of a dangling <none>
# image; after each build, dangling images with the stage's label (a stage superseded by another
# wheel or base, the CUDA variant's small one) are pruned.
TORCH_STAGE ?= recsys-stage:torch-cpu
STAGE_LABEL := recsys.stage=torch-cpu
BUILD_FLAGS = --platform $(PLATFORM) --build-arg BASE_IMAGE=$(BASE_IMAGE)
PRUNE_STAGES = docker image prune -f --filter label=$(STAGE_LABEL) >/dev/null

.PHONY: help install run serve test test-fast lint format bench-quality bench-features bench-serving bench-soak bench-scale bench-image image image-cpu local-train local-serve push clean

help:
	@echo "make install        create $(VENV) with everything: recsys, its dev tools and the aws extra (idempotent)"
	@echo "make run            install what running needs, then train on the bundled synthetic data in $(LOCAL_ML) and recommend"
	@echo "make test           install everything, then run the test suite"
	@echo "make test-fast      the in-process tests (pytest -m 'not slow'), under 2 min: no servers, moto, Docker or multi-process jobs"
	@echo "make lint           ruff (lint + format check), mypy, the import layers (lint-imports) and hadolint"
	@echo "make serve          serve the model of 'make run' on localhost:$(PORT)"
	@echo "make bench-quality  MovieLens-100K: this model vs SASRec, GRU4Rec, EASE and most-popular (A, B, cold users)"
	@echo "make bench-features synthetic data: each feature's lift (time, device, event types, user attributes)"
	@echo "make bench-serving  serving req/s and latency at 1,682 / 100,000 / 1,000,000 items"
	@echo "make bench-soak     3 minutes at 70% of the measured maximum rate, mixed requests (errors, p50/p99, RSS per 30 s), then 5 rounds of the heaviest requests"
	@echo "make bench-scale    the default job on 10M interactions end to end (target 10 min), then load-and-encode, one epoch and peak RSS at 1M / 10M / 50M"
	@echo "make bench-image    size of $(IMAGE), and serve's cold start (docker run -> /ping 200) over 7 runs"
	@echo "make image          build $(IMAGE) with CUDA 12.6 torch (GPU and CPU instances; TORCH_CUDA_INDEX= for PyPI's CUDA 13.0)"
	@echo "make image-cpu      build $(IMAGE) with CPU-only torch (a wheel in docker/wheels/ or PyTorch's CPU index)"
	@echo "make local-train    docker run $(IMAGE) train on fresh bundled data in $(LOCAL_ML), as user $(or $(DOCKER_USER),root)"
	@echo "make local-serve    docker run $(IMAGE) serve on localhost:$(PORT), then an example request"
	@echo "make push           push $(IMAGE) to ECR repository $(REPOSITORY) (REGION, PROFILE); prints its URI"
	@echo "make clean          remove $(VENV), $(LOCAL_ML), $(LOCAL_DATA) and caches"

# Two installs, each with its stamp under VENV, newer than pyproject.toml once the environment matches it:
#   .installed-runtime  recsys and its dependencies (pip install -e .): what run, serve and the benchmarks need
#   .installed          that plus the dev tools and the aws extra (-e '.[dev,aws]'): install, test, lint, push
# Once VENV has everything, the targets that need only the runtime depend on the full stamp (no second,
# smaller pip run follows), and `make install` upgrades a runtime-only VENV.
RUNTIME_STAMP := $(VENV)/.installed-runtime
FULL_STAMP := $(VENV)/.installed
RUNTIME := $(if $(wildcard $(FULL_STAMP)),$(FULL_STAMP),$(RUNTIME_STAMP))
CHECK_PYTHON = $(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "recsys needs Python 3.11 or newer; set PYTHON=python3.11")'

$(RUNTIME_STAMP): pyproject.toml
	@$(CHECK_PYTHON)
	@if [ -e $@ ]; then echo "pyproject.toml changed: updating $(VENV) (pip install -e .)"; \
	else echo "First run: installing recsys and what it needs to run (torch, pandas, pyarrow, matplotlib, FastAPI) into $(VENV): about 1 min and 1.4 GB, once. make install adds the dev tools and the aws extra."; fi
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(PIP_INDEX_FLAGS) -e .
	@touch $@

$(FULL_STAMP): pyproject.toml
	@$(CHECK_PYTHON)
	@if [ -e $@ ]; then echo "pyproject.toml changed: updating $(VENV) (pip install -e '.[dev,aws]')"; \
	elif [ -e $(RUNTIME_STAMP) ]; then echo "Adding the dev tools (pytest, ruff, mypy, moto) and the aws extra (SageMaker SDK, boto3) to $(VENV): about 1.5 min and 0.7 GB more, once."; \
	else echo "First install: recsys, its dev tools (pytest, ruff, mypy, moto) and the aws extra (SageMaker SDK, boto3) into $(VENV): about 2.5 min and 2.1 GB, once."; fi
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(PIP_INDEX_FLAGS) -e '.[dev,aws]'
	@touch $@ $(RUNTIME_STAMP)

install: $(FULL_STAMP)

run: $(RUNTIME)
	@rm -rf $(LOCAL_ML) || { echo "cannot remove $(LOCAL_ML): an earlier container wrote it as root; remove it with sudo rm -rf $(LOCAL_ML)"; exit 1; }
	@rm -rf $(LOCAL_DATA)
	$(BIN)/recsys generate-data --output $(LOCAL_DATA)
	$(BIN)/recsys train --base-dir $(LOCAL_ML) --train $(LOCAL_DATA)/train --items $(LOCAL_DATA)/items --users $(LOCAL_DATA)/users \
		-H context_columns=device
	@echo
	@echo "== example recommendations (top 5) =="
	$(BIN)/recsys recommend --model-dir $(LOCAL_ML)/model --user u0001 --user u0002 \
		--fresh u0001=i0017,i0042 --history i0003,i0017,i0042 --context device=tv --k 5
	@echo
	@echo "model: $(LOCAL_ML)/model   report: $(LOCAL_ML)/output/data/report.html (and metrics.json)"

serve: $(RUNTIME)
	SAGEMAKER_BASE_DIR=$(LOCAL_ML) SAGEMAKER_BIND_TO_PORT=$(PORT) $(BIN)/recsys serve

test: $(FULL_STAMP)
	$(BIN)/python -m pytest -q

# The suite less its `slow` tests (servers, moto, Docker, jobs run as subprocesses): see pyproject.toml.
test-fast: $(FULL_STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(FULL_STAMP)
	$(BIN)/ruff check recsys tests benchmarks
	$(BIN)/ruff format --check recsys tests benchmarks
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/hadolint Dockerfile

format: $(FULL_STAMP)
	$(BIN)/ruff format recsys tests benchmarks
	$(BIN)/ruff check --fix recsys tests benchmarks

bench-quality: $(RUNTIME)
	$(BIN)/python -m benchmarks.quality

bench-features: $(RUNTIME)
	$(BIN)/python -m benchmarks.features

bench-serving: $(RUNTIME)
	$(BIN)/python -m benchmarks.serving

bench-soak: $(RUNTIME)
	$(BIN)/python -m benchmarks.soak

bench-scale: $(RUNTIME)
	$(BIN)/python -m benchmarks.scale --job --sizes 10m
	$(BIN)/python -m benchmarks.scale

# Standard library and the Docker CLI only: the model is trained inside the image.
bench-image:
	$(PYTHON) -m benchmarks.image --image $(IMAGE) --user "$(DOCKER_USER)"

image:
	docker build $(BUILD_FLAGS) \
		$(if $(filter undefined,$(origin TORCH_CUDA_INDEX)),,--build-arg TORCH_CUDA_INDEX=$(TORCH_CUDA_INDEX)) -t $(IMAGE) .
	$(PRUNE_STAGES)

image-cpu:
	docker build $(BUILD_FLAGS) --build-arg TORCH_VARIANT=cpu --target torch-cpu -t $(TORCH_STAGE) .
	docker build $(BUILD_FLAGS) --build-arg TORCH_VARIANT=cpu -t $(IMAGE) .
	$(PRUNE_STAGES)

# Docker alone: the bundled data is generated inside the image too.
local-train:
	@rm -rf $(LOCAL_ML) || { echo "cannot remove $(LOCAL_ML): an earlier container wrote it as root; remove it with sudo rm -rf $(LOCAL_ML)"; exit 1; }
	mkdir -p $(LOCAL_ML)
	docker run --rm $(DOCKER_USER_FLAG) -v "$(abspath $(LOCAL_ML)):/opt/ml" $(IMAGE) \
		recsys generate-data --output /opt/ml/input/data
	docker run --rm $(DOCKER_USER_FLAG) -v "$(abspath $(LOCAL_ML)):/opt/ml" $(IMAGE) train

# Exit status 0 when 127.0.0.1:$(1) can be bound, as docker's proxy binds it, and no container publishes it.
port_free = $(PYTHON) -c 'import socket, sys; s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("127.0.0.1", int(sys.argv[1])))' $(1) 2>/dev/null \
	&& [ -z "$$(docker ps -q --filter publish=$(1))" ]

local-serve:
	@test -f $(LOCAL_ML)/model/manifest.json || { echo "no model in $(LOCAL_ML)/model: run make local-train (or make run) first"; exit 1; }
	@docker rm -f $(SERVE_CONTAINER) >/dev/null 2>&1 || true
	@$(call port_free,$(PORT)) || { \
		free=$$(for p in $$(seq $$(($(PORT) + 1)) $$(($(PORT) + 100))); do $(call port_free,$$p) && { echo $$p; break; }; done); \
		echo "port $(PORT) on 127.0.0.1 is already in use: stop what holds it, or pick another port, e.g. make local-serve PORT=$${free:-8081}"; exit 1; }
	docker run -d --name $(SERVE_CONTAINER) $(DOCKER_USER_FLAG) -p 127.0.0.1:$(PORT):8080 \
		-v "$(abspath $(LOCAL_ML)):/opt/ml" $(IMAGE) serve
	@for i in $$(seq 120); do curl -sf -o /dev/null localhost:$(PORT)/ping && break; sleep 0.5; done
	curl -s localhost:$(PORT)/invocations -H 'Content-Type: application/json' -d '{"user_id": "u0001", "k": 5}'
	@echo
	@echo "serving on localhost:$(PORT); stop with: docker stop $(SERVE_CONTAINER)"

push: $(FULL_STAMP)
	$(BIN)/recsys aws push --image $(IMAGE) --repository $(REPOSITORY) \
		$(if $(REGION),--region $(REGION)) $(if $(PROFILE),--profile $(PROFILE))

clean:
	rm -rf $(VENV) $(LOCAL_ML) $(LOCAL_DATA) .pytest_cache .mypy_cache .ruff_cache
