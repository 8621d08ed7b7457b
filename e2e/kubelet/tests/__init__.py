"""Unit tests of the process kubelet's pure logic (no cluster): `make harness`, and part of
`make e2e` and `make test`."""
