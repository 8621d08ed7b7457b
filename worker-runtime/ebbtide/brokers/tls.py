"""TLS to the broker: which CA verifies it, and which client certificate (if any) to show.

`rediss://` and `amqps://` URLs always verify the server's certificate and host name.
By default against the system's CAs; a private CA (the one the operator generates for a
managed broker, or yours for an external one) is named by one setting, a file path:

    EBBTIDE_BROKER_CA_FILE     PEM bundle of the CAs to trust
    EBBTIDE_BROKER_CERT_FILE   client certificate (PEM), for brokers that ask for one
    EBBTIDE_BROKER_KEY_FILE    its private key (PEM)

The operator's worker pods set them to the mounted Secrets; `BrokerTLS` can also be
passed in code (`open_broker(url, tls=...)`). Plain `redis://`/`amqp://` ignore them.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

CA_FILE_ENV = "EBBTIDE_BROKER_CA_FILE"
CERT_FILE_ENV = "EBBTIDE_BROKER_CERT_FILE"
KEY_FILE_ENV = "EBBTIDE_BROKER_KEY_FILE"


class BrokerTLSError(ValueError):
    """A TLS setting that cannot be used (a missing or unreadable file); names it."""


@dataclass(frozen=True)
class BrokerTLS:
    """Where the CA bundle and the client certificate are; None: system CAs, no client cert."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> BrokerTLS:
        env = os.environ if environ is None else environ
        tls = cls(
            ca_file=env.get(CA_FILE_ENV) or None,
            cert_file=env.get(CERT_FILE_ENV) or None,
            key_file=env.get(KEY_FILE_ENV) or None,
        )
        if tls.key_file and not tls.cert_file:
            raise BrokerTLSError(f"{KEY_FILE_ENV} is set but {CERT_FILE_ENV} is not")
        return tls

    def _check(self) -> None:
        for setting, path in (
            (CA_FILE_ENV, self.ca_file),
            (CERT_FILE_ENV, self.cert_file),
            (KEY_FILE_ENV, self.key_file),
        ):
            if path is not None and not os.path.isfile(path):
                raise BrokerTLSError(f"{setting}={path}: no such file")

    def context(self) -> ssl.SSLContext:
        """A client context that verifies the server's certificate and host name."""
        self._check()
        try:
            context = ssl.create_default_context(cafile=self.ca_file)
            if self.cert_file:
                context.load_cert_chain(self.cert_file, self.key_file)
        except (ssl.SSLError, ValueError) as exc:
            raise BrokerTLSError(f"unusable broker TLS files ({self.describe()}): {exc}") from None
        return context

    def redis_kwargs(self) -> dict[str, Any]:
        """redis-py's connection arguments for a `rediss://` URL."""
        self._check()
        kwargs: dict[str, Any] = {"ssl_cert_reqs": "required", "ssl_check_hostname": True}
        if self.ca_file:
            kwargs["ssl_ca_certs"] = self.ca_file
        if self.cert_file:
            kwargs["ssl_certfile"] = self.cert_file
            kwargs["ssl_keyfile"] = self.key_file
        return kwargs

    def describe(self) -> str:
        return f"CA {self.ca_file}" if self.ca_file else "the system CAs"


def is_tls_url(url: str) -> bool:
    # rediss+cluster:// and rediss+sentinel:// too
    return url.partition("://")[0].lower().partition("+")[0] in ("rediss", "amqps")


def explain(error: BaseException, tls: BrokerTLS) -> str:
    """One line; a certificate the CA does not vouch for says which CA it was checked
    against, since that is what to fix."""
    text = " ".join(str(error).split()) or type(error).__name__
    if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
        return f"TLS: the broker's certificate did not verify against {tls.describe()}: {text}"
    return text
