# recsys: one image that trains (`train`) and serves (`serve`) under SageMaker's contracts.
#
#   docker build -t recsys .                                   # GPU + CPU (torch 2.13.0+cu126): make image
#   docker build --build-arg TORCH_VARIANT=cpu -t recsys .     # slim CPU-only variant: make image-cpu
#   docker build --build-arg BASE_IMAGE=local/bookworm-python:latest ...   # where Docker Hub is out of reach
#
# Both make targets tag IMAGE (default recsys:latest), the image that local-train, local-serve and
# bench-image run; IMAGE=recsys:cpu keeps a second variant beside it.
#
# The CPU variant takes torch from PyTorch's CPU index, or from a wheel placed in docker/wheels/
# (for machines that cannot reach that index). The torch wheels carry their own CUDA runtime, so
# the GPU variant needs only the host's NVIDIA driver: >= 525 for the default CUDA 12.6 build,
# which most SageMaker GPU hosts have; TORCH_CUDA_INDEX= (empty) takes PyPI's CUDA 13.0 build,
# which needs >= 580 (on SageMaker: InferenceAmiVersion=al2023-ami-sagemaker-inference-gpu-4-1).
ARG BASE_IMAGE=python:3.11-slim-bookworm

# The CPU torch is installed in a stage of its own and copied over as one directory: a wheel
# COPY'd into the final image would stay in its layer (~190 MB) even after `rm`, and the legacy
# builder has no RUN --mount. For the CUDA variant this stage leaves /opt/venv empty.
# The legacy builder leaves this stage behind as an untagged image: `make image-cpu` tags it (the
# next build's cache) and prunes superseded ones by this label.
FROM ${BASE_IMAGE} AS torch-cpu

LABEL recsys.stage=torch-cpu

ARG TORCH_VARIANT=cuda
ARG TORCH_VERSION=2.13.0
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH

COPY docker/wheels/ /tmp/wheels/
RUN set -eu; \
    mkdir -p /opt/venv; \
    if [ "$TORCH_VARIANT" = cpu ]; then \
      python3 -m venv /opt/venv; \
      if ls /tmp/wheels/torch-*.whl >/dev/null 2>&1; then \
        pip install /tmp/wheels/torch-*.whl; \
      else \
        pip install "torch==${TORCH_VERSION}" --index-url "$TORCH_CPU_INDEX" --extra-index-url https://pypi.org/simple; \
      fi; \
    fi

FROM ${BASE_IMAGE}

ARG TORCH_VARIANT=cuda
ARG TORCH_VERSION=2.13.0
# CUDA 12.6 (NVIDIA driver >= 525): what SageMaker's GPU training and hosting images provide.
# Empty: PyPI's build (torch 2.13.0: CUDA 13.0, driver >= 580, Turing or newer).
ARG TORCH_CUDA_INDEX=https://download.pytorch.org/whl/cu126

LABEL com.amazonaws.sagemaker.capabilities.accept-bind-to-port=true
LABEL com.amazonaws.sagemaker.capabilities.multi-models=true

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH

# torch first, alone: the largest layer, rebuilt only when the variant or version changes.
COPY --from=torch-cpu /opt/venv /opt/venv
# The CUDA build (several GB) is installed here rather than in a stage, which would copy it twice.
RUN set -eu; \
    if [ "$TORCH_VARIANT" != cpu ]; then \
      python3 -m venv /opt/venv; \
      if [ -n "$TORCH_CUDA_INDEX" ]; then \
        pip install "torch==${TORCH_VERSION}" --index-url "$TORCH_CUDA_INDEX" --extra-index-url https://pypi.org/simple; \
      else \
        pip install "torch==${TORCH_VERSION}"; \
      fi; \
    fi

# The other dependencies, from pyproject.toml alone, so that a code or README change does not
# reinstall them (the README is only the package's long description: a stub does for this step).
WORKDIR /opt/recsys
COPY pyproject.toml ./
RUN mkdir recsys && touch recsys/__init__.py README.md && pip install . && pip uninstall -y recsys && rm -rf recsys build

COPY README.md ./
COPY recsys/ recsys/
RUN pip install --no-deps . && rm -rf build
COPY docker/entrypoint.sh /usr/local/bin/recsys-entrypoint

# Any uid may run the image (`docker run --user 12345:12345` keeps a mounted tree the caller's),
# with no passwd entry and no home: HOME, where matplotlib and torch keep their caches, is /tmp
# rather than the unwritable / that Docker gives such a user (SageMaker's root gets the same), and
# bytecode was compiled by pip at install time and is never written at run time.
ENV HOME=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib

# Nothing under /opt/ml: SageMaker mounts it.
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/recsys-entrypoint"]
