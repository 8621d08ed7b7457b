# Ebbtide worker runtime base image. Build your worker image FROM it:
#
#   FROM ebbtide/runtime:0.1.0
#   COPY --chown=10001:10001 myproject/ /app/myproject/
#
# The operator runs `ebbtide worker MODULE:APP ...` in it; /app is on PYTHONPATH.
# Build from the repository root:  docker build -f docker/runtime.Dockerfile -t ebbtide/runtime:0.1.0 .
# Pinned base tag, no pip cache, the runtime with both brokers' clients (redis, pika) and
# prometheus-client, nothing of the operator's; non-root.
#
# BASE_IMAGE: any image with python3 >= 3.11 and /bin/sh. `make images` builds one from
# Debian's packages (no registry is reachable there) and passes it here.
# docker/wheels/: when it holds wheels (`make images` builds them on the host with `pip
# wheel`), they are installed offline (--no-index); when it holds none, from PyPI.
ARG BASE_IMAGE=python:3.11.11-slim-bookworm
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONPATH=/app \
    PATH=/opt/ebbtide/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/tmp

COPY pyproject.toml README.md /src/
COPY worker-runtime /src/worker-runtime
COPY operator /src/operator
COPY docker/wheels/ /wheels/
COPY docker/pip-install.sh /usr/local/lib/ebbtide-pip-install.sh
# `.[rabbitmq,msgpack,encryption]`: the runtime's own dependencies, pika, and what reads
# every payload format (docs/runtime.md); the operator's (kopf, kubernetes) stay out.
RUN sh /usr/local/lib/ebbtide-pip-install.sh "/src[rabbitmq,msgpack,encryption]" \
    && mkdir /app && chown 10001:10001 /app

WORKDIR /app
USER 10001:10001
EXPOSE 9100
CMD ["ebbtide", "--help"]
