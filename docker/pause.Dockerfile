# The pod sandbox ("pause") image: one static binary (docker/pause/pause.c, compiled by
# scripts/build-images.sh into the build context as docker/.build/pause). containerd's
# sandbox_image names it, since no registry is reachable to pull registry.k8s.io/pause.
FROM scratch
COPY docker/.build/pause /pause
USER 65535:65535
ENTRYPOINT ["/pause"]
