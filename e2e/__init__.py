"""End-to-end harness: a local control plane, a process kubelet and the e2e suite."""
