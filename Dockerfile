# recsys: one image that trains (`train`) and serves (`serve`) under SageMaker's contracts.
#
#   docker build -t recsys .                                   # GPU + CPU (PyPI's CUDA build of torch)
#   docker build --build-arg TORCH_VARIANT=cpu -t recsys:cpu .   # slim CPU-only variant
#   docker build --build-arg BASE_IMAGE=local/bookworm-python:latest ...   # where Docker Hub is out of reach
#
# The CPU variant takes torch from PyTorch's CPU index, or from a wheel placed in docker/wheels/
# (for machines that cannot reach that index). PyPI's Linux torch wheel carries its own CUDA
# runtime, so the GPU variant needs only the host's NVIDIA driver.
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

ARG TORCH_VARIANT=cuda
ARG TORCH_VERSION=2.13.0
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu

LABEL com.amazonaws.sagemaker.capabilities.accept-bind-to-port=true

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH

RUN python3 -m venv /opt/venv

# torch first, alone: the largest layer, rebuilt only when the variant or version changes.
COPY docker/wheels/ /tmp/wheels/
RUN set -eu; \
    if [ "$TORCH_VARIANT" = cpu ]; then \
      if ls /tmp/wheels/torch-*.whl >/dev/null 2>&1; then \
        pip install /tmp/wheels/torch-*.whl; \
      else \
        pip install "torch==${TORCH_VERSION}" --index-url "$TORCH_CPU_INDEX" --extra-index-url https://pypi.org/simple; \
      fi; \
    else \
      pip install "torch==${TORCH_VERSION}"; \
    fi; \
    rm -rf /tmp/wheels

# The other dependencies, from pyproject.toml alone, so that a code change does not reinstall them.
WORKDIR /opt/recsys
COPY pyproject.toml README.md ./
RUN mkdir recsys && touch recsys/__init__.py && pip install . && pip uninstall -y recsys && rm -rf recsys build

COPY recsys/ recsys/
RUN pip install --no-deps . && rm -rf build
COPY docker/entrypoint.sh /usr/local/bin/recsys-entrypoint

# Nothing under /opt/ml: SageMaker mounts it.
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/recsys-entrypoint"]
