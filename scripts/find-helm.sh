#!/usr/bin/env bash
# Print the helm binary to use: $EBBTIDE_HELM, then the control plane's build cache
# (~/.cache/ebbtide/k8s-*/helm, built by `make cluster-up`), then ~/.cache/ebbtide/helm-*/helm,
# then PATH. Exits 1 with a hint when there is none.
set -euo pipefail
if [[ -n "${EBBTIDE_HELM:-}" ]]; then echo "$EBBTIDE_HELM"; exit 0; fi
cache="${HOME}/.cache/ebbtide"
for pattern in "k8s-*/helm" "k8s-*/bin/helm" "helm-*/helm"; do
  # newest version first
  found=$(compgen -G "${cache}/${pattern}" | sort -rV | head -n1 || true)
  if [[ -n "$found" && -x "$found" ]]; then echo "$found"; exit 0; fi
done
if command -v helm >/dev/null; then command -v helm; exit 0; fi
echo "find-helm: no helm binary; run \`make cluster-up\` (it builds one) or set EBBTIDE_HELM" >&2
exit 1
