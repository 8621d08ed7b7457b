"""Which resourceVersion a TaskQueue status write carries, so that a stale writer gets a
409 instead of silently overwriting a fresher operator's scaling state. Pure.

A tick decides from its own memory (policy state, scale times, pod start-up), which is
the status it last wrote, or the one it adopted from the stored object. Its write must
therefore be refused when anyone else has written the status since. The precondition is:

- the body's resourceVersion when the body (kopf's watched copy) shows the status this
  memory stands on: whatever changed after it (kopf's annotations, a spec edit) was not
  the status, so the decision still holds;
- otherwise the resourceVersion our own last write produced: the body may simply lag
  behind that write (then the write goes through), or someone wrote after it (then the
  API server refuses it, and the tick re-reads and adopts what it finds: `adopt`).

Every status write names its writer in `status.writer`: `<pod>/<incarnation>#<serial>`,
unique per write, so "shows the status this memory stands on" is one string comparison,
and anyone can read from the TaskQueue which operator wrote its status last.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

WRITER_KEY = "writer"


def default_writer(env: Mapping[str, str] | None = None) -> str:
    """`<pod>/<incarnation>`: POD_NAME (the chart sets it) or the host name, and a random
    tag per process, so a restarted container never reuses its predecessor's tokens."""
    env = os.environ if env is None else env
    pod = env.get("POD_NAME", "").strip() or socket.gethostname()
    return f"{pod}/{secrets.token_hex(3)}"


def written_by(obj: Mapping[str, Any] | None) -> str | None:
    """The `status.writer` token of a stored TaskQueue."""
    value = ((obj or {}).get("status") or {}).get(WRITER_KEY)
    return value if isinstance(value, str) else None


def writer_pod(token: str | None) -> str | None:
    """The pod part of a token: which operator wrote."""
    return token.split("/", 1)[0] if token else None


def resource_version(obj: Mapping[str, Any] | None) -> str | None:
    value = ((obj or {}).get("metadata") or {}).get("resourceVersion")
    return value if isinstance(value, str) and value else None


@dataclass
class StatusFence:
    writer: str  # default_writer()
    serial: int = 0
    token: str | None = None  # status.writer of the status our memory stands on
    version: str | None = None  # a resourceVersion at which the stored status had `token`

    def precondition(self, body: Mapping[str, Any]) -> str | None:
        """The resourceVersion the next status write must carry."""
        if self.token is None or written_by(body) == self.token:
            return resource_version(body)  # nothing of ours yet: decided from this body
        return self.version or resource_version(body)

    def next_token(self) -> str:
        """The token for the next write (taken only when the write succeeds)."""
        return f"{self.writer}#{self.serial + 1}"

    def wrote(self, token: str, version: str | None) -> None:
        """Our write went through at `version`."""
        self.serial += 1
        self.token, self.version = token, version

    def foreign(self, stored: Mapping[str, Any]) -> bool:
        """After a Conflict: whether someone else wrote the status since our memory's
        version (then it must be adopted), or only metadata/spec changed."""
        return written_by(stored) != self.token

    def adopt(self, stored: Mapping[str, Any]) -> None:
        """Our memory now stands on `stored`'s status, at its resourceVersion."""
        self.token, self.version = written_by(stored), resource_version(stored)
