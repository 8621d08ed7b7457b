"""`python -m ebbtide_operator`: kopf run with settings from the environment.

  EBBTIDE_NAMESPACES  comma-separated namespaces to watch; empty or unset = all
  EBBTIDE_LIVENESS    kopf liveness endpoint (default http://0.0.0.0:8080/healthz)
Equivalent to `kopf run -m ebbtide_operator.main --all-namespaces|-n NS... --liveness URL`.
"""

from __future__ import annotations

import os

import kopf

import ebbtide_operator.main  # noqa: F401 - registers the handlers


def run() -> None:
    namespaces = [
        ns.strip() for ns in os.environ.get("EBBTIDE_NAMESPACES", "").split(",") if ns.strip()
    ]
    liveness = os.environ.get("EBBTIDE_LIVENESS", "http://0.0.0.0:8080/healthz")  # noqa: S104
    kopf.configure(verbose=False)
    kopf.run(
        clusterwide=not namespaces,
        namespaces=namespaces,
        liveness_endpoint=liveness or None,
        standalone=True,
    )


if __name__ == "__main__":
    run()
