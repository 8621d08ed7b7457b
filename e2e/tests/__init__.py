"""The e2e suite, run on a real API server (see e2e/README.md)."""
