# syntax=docker/dockerfile:1
# One image for EKS and SageMaker (docs/contracts.md, "Container"). Build it with `make image`
# [TARGET=training]: the Makefile fills build/wheels/<target> (a wheelhouse of the CPU torch
# build and the rest, pinned by requirements.lock) and passes INPUTS_HASH so a changed input
# always rebuilds. Targets:
#   serving  (default) TorchServe + Java 17 + the handler's libraries + the gateway; the entry
#            point `python -m archives.container serve|torchserve|gateway|fetch-models`
#   training Spark + PyTorch + the MLflow client + our CLIs (etl, training, archives, ...)
# No compilers: every Python package comes from the wheelhouse, installed with --no-index
# (torch's C++ headers and test binaries, 145 MB, are dropped: nothing here compiles against it).
ARG BASE_IMAGE=docker.io/library/debian:bookworm-slim

FROM ${BASE_IMAGE} AS base
ENV DEBIAN_FRONTEND=noninteractive \
    LANG=C.UTF-8 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# Debian bookworm's Python 3.11 (the wheelhouse is built for it) and Java 17 (Spark, TorchServe).
# Versions are those of the base image's Debian point release; a rebuild takes its security fixes.
# (openjdk's post-install links its manual page: slim images have no /usr/share/man/man1.)
# hadolint ignore=DL3008
RUN mkdir -p /usr/share/man/man1 \
 && apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv openjdk-17-jre-headless \
      tini ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv \
 && useradd --uid 10001 --user-group --create-home --home-dir /home/recsys \
      --shell /usr/sbin/nologin recsys

# Our code, per target (the serving image has no Spark stages; the training image has all).
FROM base AS source
ARG INPUTS_HASH=unknown
RUN --mount=type=bind,target=/ctx \
    echo "inputs ${INPUTS_HASH}" \
 && for target in serving training; do mkdir -p "/app/$target"; done \
 && for d in core common archives handlers realtime gateway recsys_sagemaker; do \
      if [ -d "/ctx/$d" ]; then cp -a "/ctx/$d" /app/serving/; fi; done \
 && for d in core common archives handlers realtime gateway recsys_sagemaker etl training monitoring; do \
      if [ -d "/ctx/$d" ]; then cp -a "/ctx/$d" /app/training/; fi; done \
 && find /app -name __pycache__ -prune -exec rm -rf {} +

FROM base AS serving-deps
ARG DEPS_HASH=unknown
RUN --mount=type=bind,source=build/wheels/serving,target=/wheels \
    echo "dependencies ${DEPS_HASH}" \
 && pip install --no-cache-dir --no-index --find-links /wheels \
      -r /wheels/requirements.txt -c /wheels/constraints.txt \
 && rm -rf /opt/venv/lib/python3.11/site-packages/torch/include \
      /opt/venv/lib/python3.11/site-packages/torch/test

FROM base AS training-deps
ARG DEPS_HASH=unknown
RUN --mount=type=bind,source=build/wheels/training,target=/wheels \
    echo "dependencies ${DEPS_HASH}" \
 && pip install --no-cache-dir --no-index --find-links /wheels \
      -r /wheels/requirements.txt -c /wheels/constraints.txt \
 && rm -rf /opt/venv/lib/python3.11/site-packages/torch/include \
      /opt/venv/lib/python3.11/site-packages/torch/test

FROM base AS training
COPY --from=training-deps /opt/venv /opt/venv
COPY --from=source /app/training /opt/recsys
ARG VERSION=dev
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="recsys-training" \
      org.opencontainers.image.description="Hybrid recommender: Spark ETL, PyTorch training, MLflow client, archive builder" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}"
ENV PYTHONPATH=/opt/recsys
USER 10001:10001
WORKDIR /home/recsys
HEALTHCHECK NONE
# e.g. `podman run IMAGE training run --out /data/run` or `... etl run --out /data/run`
ENTRYPOINT ["/usr/bin/tini", "--", "python", "-m"]
CMD ["training", "--help"]

FROM base AS serving
COPY --from=serving-deps /opt/venv /opt/venv
COPY --from=source /app/serving /opt/recsys
ARG VERSION=dev
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="recsys" \
      org.opencontainers.image.description="Hybrid recommender serving: TorchServe (SageMaker serve / EKS torchserve), gateway, S3 model fetch" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      com.amazonaws.sagemaker.capabilities.accept-bind-to-port="true"
# Everything the entry point writes (run folder, TorchServe's logs and unpacked archives) is
# under RECSYS_RUN_ROOT: /tmp, an emptyDir when the root file system is read-only.
ENV PYTHONPATH=/opt/recsys \
    RECSYS_RUN_ROOT=/tmp/recsys
USER 10001:10001
WORKDIR /home/recsys
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=5s --start-period=180s --retries=3 \
  CMD ["python", "-m", "archives.container", "healthcheck"]
# tini is PID 1: it reaps orphans and hands SIGTERM to the entry point, which drains TorchServe.
ENTRYPOINT ["/usr/bin/tini", "--", "python", "-m", "archives.container"]
CMD ["serve"]
