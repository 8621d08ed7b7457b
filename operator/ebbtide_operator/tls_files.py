"""The CA and client certificates the operator reads from Secrets, as private files.

Python's ssl module (under redis-py and pika) takes CA bundles and client certificates
as file paths, so the PEM text from a Secret is written to a private directory (0700,
files 0600), named by its content's hash: the same content is always the same path, so
a BrokerTLS built from it (and the Redis client cached for it) stays equal until a
Secret really changes.
"""

from __future__ import annotations

import functools
import hashlib
import os
import tempfile

from ebbtide.brokers.tls import BrokerTLS


class TLSFiles:
    def __init__(self, directory: str | None = None) -> None:
        self.directory = directory or tempfile.mkdtemp(prefix="ebbtide-operator-tls-")
        os.makedirs(self.directory, exist_ok=True)
        os.chmod(self.directory, 0o700)

    def path(self, pem: str, suffix: str) -> str:
        """The file holding `pem` (written once, atomically)."""
        digest = hashlib.sha256(pem.encode()).hexdigest()[:32]
        path = os.path.join(self.directory, f"{digest}.{suffix}")
        if not os.path.exists(path):
            fd, temporary = tempfile.mkstemp(dir=self.directory)
            with os.fdopen(fd, "w") as handle:
                handle.write(pem)
            os.replace(temporary, path)
        return path

    def broker_tls(
        self, ca_pem: str | None, cert_pem: str | None = None, key_pem: str | None = None
    ) -> BrokerTLS:
        return BrokerTLS(
            ca_file=self.path(ca_pem, "ca.crt") if ca_pem else None,
            cert_file=self.path(cert_pem, "tls.crt") if cert_pem else None,
            key_file=self.path(key_pem, "tls.key") if key_pem else None,
        )


@functools.cache
def shared() -> TLSFiles:
    """One directory for the whole operator process."""
    return TLSFiles()
