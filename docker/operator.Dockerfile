# Ebbtide operator image (the chart's image.repository).
# Build from the repository root:  docker build -f docker/operator.Dockerfile -t ebbtide/operator:0.1.0 .
# Pinned base tag, no pip cache, non-root numeric user; runs with a read-only root filesystem
# (the chart mounts an emptyDir on /tmp).
#
# BASE_IMAGE and docker/wheels/: as in runtime.Dockerfile (`make images` builds the base
# from Debian's packages and the wheels on the host; without wheels pip uses PyPI).
ARG BASE_IMAGE=python:3.11.11-slim-bookworm
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/ebbtide/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/tmp

COPY pyproject.toml README.md /src/
COPY worker-runtime /src/worker-runtime
COPY operator /src/operator
COPY docker/wheels/ /wheels/
COPY docker/pip-install.sh /usr/local/lib/ebbtide-pip-install.sh
# The operator uses the kubernetes client's synchronous API only: its asyncio copy
# (kubernetes/aio, ~70 MB with bytecode) is never imported, and goes.
RUN sh /usr/local/lib/ebbtide-pip-install.sh "/src[operator]" \
    && rm -rf /opt/ebbtide/lib/python3*/site-packages/kubernetes/aio

USER 10001:10001
# 8080: kopf's liveness endpoint; 8081: Prometheus metrics (EBBTIDE_OPERATOR_METRICS_PORT).
EXPOSE 8080 8081
ENTRYPOINT ["kopf"]
CMD ["run", "--module=ebbtide_operator.main", "--standalone", "--all-namespaces", "--liveness=http://0.0.0.0:8080/healthz"]
