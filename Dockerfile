# One image for every modelroll service: `modelroll router | controller | worker | db upgrade`.
# Build:  docker build -t registry.example.com/ml/modelroll:0.1.0 .
# Runs as uid 10001 on a read-only root filesystem; HOME, MODELROLL_HOME and /tmp are
# volumes (the Helm chart mounts emptyDirs there), artifacts a shared volume.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
# torch comes alone, first and pinned, from an index of CPU-only wheels, so nothing can
# pull a CUDA build (gigabytes the image never uses). Point TORCH_INDEX_URL at a mirror
# of that index, or pass PIP_FIND_LINKS / PIP_INDEX_URL for a local wheelhouse or proxy.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG PIP_FIND_LINKS=""
ARG PIP_INDEX_URL=""
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/modelroll
ENV PATH=/opt/modelroll/bin:${PATH}
WORKDIR /src
COPY constraints.txt pyproject.toml README.md* ./
# An empty build argument would reach pip as an empty setting: drop those.
RUN [ -n "${PIP_INDEX_URL}" ] || unset PIP_INDEX_URL; [ -n "${PIP_FIND_LINKS}" ] || unset PIP_FIND_LINKS; \
    pip install -c constraints.txt --index-url "${TORCH_INDEX_URL}" torch==2.13.0
COPY modelroll ./modelroll
COPY modelroll_app ./modelroll_app
COPY optimizer ./optimizer
COPY router ./router
COPY controller ./controller
COPY migrations ./migrations
# Not editable: the runtime stage copies only the virtualenv, never the sources.
RUN [ -n "${PIP_INDEX_URL}" ] || unset PIP_INDEX_URL; [ -n "${PIP_FIND_LINKS}" ] || unset PIP_FIND_LINKS; \
    pip install -c constraints.txt '.[openvino]' \
 && modelroll --help > /dev/null \
 && python -c "import modelroll.migrate as m; print('migrations at', m.migrations_dir())"

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="modelroll" \
      org.opencontainers.image.description="Build INT8 and pruned candidates of a production model and roll the best one out on live traffic." \
      org.opencontainers.image.licenses="Apache-2.0"
# libgomp: OpenMP runtime of onnxruntime and torch CPU kernels; tini: reaps the router's
# runner subprocesses and forwards SIGTERM so in-flight requests can finish.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 tini \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 modelroll \
 && useradd --system --uid 10001 --gid 10001 --home-dir /home/modelroll --create-home --shell /usr/sbin/nologin modelroll \
 && mkdir -p /var/lib/modelroll/artifacts \
 && chown -R 10001:10001 /var/lib/modelroll
COPY --from=build /opt/modelroll /opt/modelroll
ENV PATH=/opt/modelroll/bin:${PATH} \
    HOME=/home/modelroll \
    MODELROLL_HOME=/home/modelroll/.modelroll \
    MODELROLL_ARTIFACTS_DIR=/var/lib/modelroll/artifacts \
    TMPDIR=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
WORKDIR /home/modelroll
VOLUME ["/home/modelroll", "/var/lib/modelroll/artifacts"]
# router (Open Inference Protocol V2), controller (ops API, status pages), worker (metrics)
EXPOSE 8080 8081 8082
ENTRYPOINT ["tini", "--", "modelroll"]
CMD ["--help"]
