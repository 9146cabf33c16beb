"""Secrets out of what is printed or stored: URLs and messages with their passwords masked.

    redact("postgresql+psycopg://hpo:pw@db:5432/optuna?sslpassword=x")
    # -> 'postgresql+psycopg://hpo:***@db:5432/optuna?sslpassword=***'

No parsing is trusted: a malformed URL (a password holding '@', '/', '?' or '#', no scheme,
a broken IPv6 host) is masked by the same rules, which err towards hiding too much. The
userinfo ends at the last '@' of the URL, so an '@' in a query hides the host as well; without
an '@', whatever follows a host's ':' other than a port number is masked.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

MASK = "***"
# Query or key=value names whose value is a secret (lowercased, percent-decoded, '-' as '_').
_SECRET_WORDS = ("pass", "pwd", "secret", "token", "key", "auth", "credential", "signature")
_SECRET_NAMES = {"sig"}  # Azure SAS; as a substring it would hide sigma=
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
_PAIR = re.compile(r"(^|[?&;,\s])([^=?&;,\s#]+)=([^&;\s#]*)")
# A URL in prose: up to a blank or quote, less the punctuation that ends its sentence.
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>]*[^\s'\"<>.,:;)]")
_HTTP = ("http", "https")
_MASKED = re.compile(r"\*\*\*[.,:;)]*")  # masked already (the punctuation ends a sentence)


def redact(url: str) -> str:
    """`url` with its password, and the values of secret-looking parameters, replaced by ***.

    `user:password@` keeps the user; a bare `token@` of an http(s) URL is masked whole (it is
    how tokens ride in such URLs), a bare user of a database URL is kept. Parameters named like
    password, pass, pwd, secret, token, *key, auth, credential or sig, in any case, keep their
    name and lose their value.
    """
    match = _SCHEME.match(url)
    head, rest = (url[: match.end()], url[match.end() :]) if match else ("", url)
    at = rest.rfind("@")
    if at >= 0:
        user, colon, _ = rest[:at].partition(":")
        scheme = match.group(1).lower() if match else ""
        if colon:
            rest = f"{user}:{MASK}{rest[at:]}"
        elif scheme in _HTTP:
            rest = f"{MASK}{rest[at:]}"
    else:
        end = re.search(r"[/?#]|$", rest).start()  # type: ignore[union-attr]
        rest = ",".join(_mask_port(h) for h in rest[:end].split(",")) + rest[end:]
    return head + _mask_pairs(rest)


def _mask_port(host: str) -> str:
    # user:password without '@', or a mistyped port: either way, only digits are shown.
    name, colon, port = host.rpartition("]:") if host.startswith("[") else host.partition(":")
    if host.startswith("[") and not colon:
        return host
    if colon and not port.isdigit():
        return f"{name}{colon}{MASK}"
    return host


def redact_text(text: str) -> str:
    """`text` with every URL in it redacted, and secret-looking NAME=VALUE pairs masked."""
    return _mask_pairs(_URL.sub(lambda m: redact(m.group(0)), text))


def _mask_pairs(text: str) -> str:
    def mask(m: re.Match[str]) -> str:
        lead, name, value = m.groups()
        key = unquote(name).lower().replace("-", "_")
        secret = key in _SECRET_NAMES or any(w in key for w in _SECRET_WORDS)
        if secret and value and not _MASKED.fullmatch(value):
            return f"{lead}{name}={MASK}"
        return m.group(0)

    return _PAIR.sub(mask, text)
