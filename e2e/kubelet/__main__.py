"""`python -m e2e.kubelet --kubeconfig PATH [--node-name NAME]` (from the repo root)."""

import sys

from e2e.kubelet.cli import main

sys.exit(main())
