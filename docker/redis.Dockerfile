# A local stand-in for `redis:7.2-alpine` (the operator's default managed Redis image),
# from Debian's redis-server, for machines that cannot pull. Tagged with that exact name
# by `make images`, so the operator's manifests are unchanged. The operator runs
# `redis-server ARGS` as uid 999 with /data mounted; nothing else is needed of the image.
ARG DEBIAN_IMAGE=debian:bookworm-slim
FROM ${DEBIAN_IMAGE}
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/log/* /usr/share/doc /usr/share/man /usr/share/info \
    && mkdir /data && chown 999:999 /data
WORKDIR /data
USER 999:999
EXPOSE 6379
CMD ["redis-server"]
