# A local stand-in for `rabbitmq:3.13-management` (the operator's default managed RabbitMQ
# image), from Debian's rabbitmq-server (with its management plugin), for machines that
# cannot pull. Tagged with that exact name by `make images`, so the operator's manifests
# are unchanged. The operator keeps the image's command and sets RABBITMQ_* env, HOME and
# the mounts (/etc/rabbitmq, /var/lib/rabbitmq, its mnesia dir, /var/log/rabbitmq, /tmp).
ARG DEBIAN_IMAGE=debian:bookworm-slim
FROM ${DEBIAN_IMAGE}
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends rabbitmq-server \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/log/* /usr/share/doc /usr/share/man /usr/share/info \
    && mkdir -p /var/lib/rabbitmq /var/log/rabbitmq \
    && chown -R 999:999 /var/lib/rabbitmq /var/log/rabbitmq
USER 999:999
EXPOSE 5672 15672
# Debian's /usr/sbin/rabbitmq-server wrapper insists on root or a user named rabbitmq;
# the script underneath runs as any user.
CMD ["/usr/lib/rabbitmq/bin/rabbitmq-server"]
