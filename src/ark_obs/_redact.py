"""Credentials never leave the process in clear: URLs are shown masked, error texts are scrubbed.

>>> redact_url("redis://:s3cret@10.0.0.5:6379/0")
'redis://***@10.0.0.5:6379/0'
>>> scrub("AUTH s3cret failed", "redis://:s3cret@10.0.0.5:6379/0")
'AUTH *** failed'

Every log line, error message, ``/readyz`` detail and ``check-config`` line that names the trace store
or the canary's Prometheus goes through ``redact_url``; exception texts that could echo a credential
go through ``scrub``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final
from urllib.parse import parse_qsl, unquote, urlsplit

MASK: Final = "***"
_USERINFO: Final = re.compile(r"(?<=//)[^@/\s]*@")
# redis-py also reads ?password=...; anything that looks like a credential in a query is masked
_SECRET_QUERY: Final = re.compile(r"(?<=[?&])((?:[A-Za-z_]*)(?:pass|token|secret|auth|key)[A-Za-z_]*)=[^&#\s]*", re.I)


def redact_url(url: str) -> str:
    """``url`` with its user information and credential-like query values replaced by ``***``."""
    return _SECRET_QUERY.sub(rf"\1={MASK}", _USERINFO.sub(MASK + "@", url))


def secrets_of(url: str) -> list[str]:
    """The credentials ``url`` carries (its password, user information, credential-like query values)."""
    try:
        parts = urlsplit(url)
        found = [parts.password or ""]
        found += [v for k, v in parse_qsl(parts.query) if _SECRET_QUERY.search("?" + k + "=")]
    except ValueError:  # a malformed URL: mask its whole user information below
        found = []
    match = _USERINFO.search(url)
    if match:
        found.append(match.group()[:-1])
    # shorter strings than 4 characters are left: masking them would mangle ordinary words
    out = {s for f in found for s in (f, unquote(f)) if len(s) >= 4}
    return sorted(out, key=len, reverse=True)


def scrub(text: str, *urls: str, secrets: Iterable[str | None] = ()) -> str:
    """``text`` with every credential of ``urls`` and every one of ``secrets`` masked (and URLs in it redacted)."""
    found = [s for url in urls for s in secrets_of(url)] + [s for s in secrets if s and len(s) >= 4]
    for secret in sorted(found, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return redact_url(text)
