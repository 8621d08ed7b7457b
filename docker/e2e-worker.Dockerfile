# The e2e suite's worker image: the runtime image plus the suite's task modules
# (e2e/tests/apps) and examples/, on PYTHONPATH through /app.
ARG RUNTIME_IMAGE=ebbtide/runtime:0.1.0
FROM ${RUNTIME_IMAGE}
COPY --chown=10001:10001 e2e/tests/apps/ /app/
COPY --chown=10001:10001 examples/ /app/examples/
