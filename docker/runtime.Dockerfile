# Ebbtide worker runtime base image. Build your worker image FROM it:
#
#   FROM ebbtide/runtime:0.1.0
#   COPY --chown=10001:10001 myproject/ /app/myproject/
#   # optional: RUN pip install --no-cache-dir --user -r requirements.txt
#
# The operator runs `ebbtide worker MODULE:APP ...` in it; /app is on PYTHONPATH.
# Build from the repository root:  docker build -f docker/runtime.Dockerfile -t ebbtide/runtime:0.1.0 .
# Pinned base tag, no pip cache, only the slim runtime (redis, prometheus-client), non-root.
FROM python:3.11.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONPATH=/app \
    HOME=/tmp

COPY pyproject.toml README.md /src/
COPY worker-runtime /src/worker-runtime
COPY operator /src/operator
# `.` installs the runtime's own dependencies only; the operator's (kopf, kubernetes) stay out.
RUN pip install --no-cache-dir /src \
    && rm -rf /src \
    && useradd --uid 10001 --user-group --no-create-home --home-dir /tmp --shell /usr/sbin/nologin ebbtide \
    && mkdir /app && chown 10001:10001 /app

WORKDIR /app
USER 10001:10001
EXPOSE 9100
CMD ["ebbtide", "--help"]
