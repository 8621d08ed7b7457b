"""Where the broker URL comes from: a flag, else the file EBBTIDE_BROKER_URL_FILE names
(a mounted Secret: the operator's worker pods), else the env var EBBTIDE_BROKER_URL
(local use). The file wins over the env var: an env var is inherited by every
subprocess a task starts, a file is not handed on.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from .errors import BrokerUrlFileError

URL_ENV = "EBBTIDE_BROKER_URL"
URL_FILE_ENV = "EBBTIDE_BROKER_URL_FILE"


def read_url_file(path: str) -> str:
    """The URL in `path`, surrounding whitespace (a Secret's trailing newline) removed;
    one clear error when the file cannot be read, is empty, or holds more than a URL."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read(65536)
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise BrokerUrlFileError(
            f"{URL_FILE_ENV}={path}: cannot read the broker URL: {why}"
        ) from None
    url = text.strip()
    if not url:
        raise BrokerUrlFileError(f"{URL_FILE_ENV}={path}: the file is empty, expected a broker URL")
    if any(c.isspace() for c in url):
        raise BrokerUrlFileError(
            f"{URL_FILE_ENV}={path}: the file holds more than one line or word; "
            "expected just the broker URL"
        )
    return url


def url_from_environment(env: Mapping[str, str] | None = None) -> str | None:
    """The URL the environment gives: the file's, else the env var's, else None."""
    env = os.environ if env is None else env
    path = env.get(URL_FILE_ENV)
    if path:
        return read_url_file(path)
    return env.get(URL_ENV) or None
