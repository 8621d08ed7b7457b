# A local stand-in for the python:3.11-slim-bookworm base, from Debian's own python3
# (3.11 in bookworm): `make images` builds it FROM a debootstrap'd Debian, because no
# registry is reachable there, and passes it to operator/runtime.Dockerfile as BASE_IMAGE.
ARG DEBIAN_IMAGE=debian:bookworm-slim
FROM ${DEBIAN_IMAGE}
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/log/* /usr/share/doc /usr/share/man /usr/share/info
