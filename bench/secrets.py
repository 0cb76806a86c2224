"""What may be written or printed: the one credential mask, and control characters escaped.

Every output path goes through :func:`mask_credentials` (text) or :func:`mask_tree` (a config or
parameter dict): log records (:func:`install_log_masking`, installed by the CLI), error lines (the
CLI's error boundary), MLflow params and tags (:mod:`bench.tracking.client`), a run folder's
``config.yaml`` and ``status.json``, sweep tags and prints, reports.

Two mechanisms work together:

- **Known secrets.** A URL seen whole (``--tracking-uri``, ``--storage``, ``$MLFLOW_TRACKING_URI``,
  any ``scheme://`` argument) is parsed — with SQLAlchemy's ``make_url`` when installed, with
  ``urllib`` and with a last-``@`` rule — and every candidate password is *registered*; so is the
  value of every parameter whose name looks secret (:func:`is_secret_name`: ``password``,
  ``api_token``, ``secret``, ``api_key``...). A registered secret is replaced by ``***`` wherever
  it occurs, in its raw, percent-encoded, percent-decoded, ``repr``/JSON-escaped, YAML-quoted and
  HTML-escaped forms: any character in a password is covered, quotes, ``<>``, spaces and ``@``
  included. Secrets shorter than :data:`MIN_SECRET_LENGTH` are not registered (masking every
  ``a`` would destroy the output); the URL rule below still hides them inside URLs.
- **URL rule** for text nobody registered: ``scheme://user:password@`` (up to the last ``@`` of the
  whitespace-free token) and ``?password=...``-style query values become ``***``.
"""

from __future__ import annotations

import html
import json
import logging
import re
import threading
import unicodedata
from typing import Any
from urllib.parse import parse_qsl, quote, quote_plus, unquote, urlsplit

#: Shortest secret value that is masked wherever it occurs (shorter ones only inside URLs).
MIN_SECRET_LENGTH = 4
MASK = "***"

_CRED_RE = re.compile(
    r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.\-]*://)"
    r"(?P<cred>[^\s/@'\"<>:]*:\S*@|[^\s/@'\"<>:]+@)")
_QUERY_SECRET_RE = re.compile(r"(?i)((?:password|passwd|pwd|token|secret|key)=)[^&\s'\"<>]+")
_SECRET_NAME_RE = re.compile(
    r"(?i)^(?:token|key|secret|password|passwd|pwd|credentials?|auth)$"
    r"|(?:^|[._-])(?:password|passwd|pwd|secret|secrets|secret_key|credentials?|private_key|"
    r"api_?key|access_?key|auth_?key|(?:api|access|auth|bearer|refresh|session|hf|github|gh|id)"
    r"_?token)$")

#: Text that is one URL: a scheme, then no line break, and no whitespace after the last "@".
_WHOLE_URL_RE = re.compile(r"\s*[a-zA-Z][a-zA-Z0-9+.\-]*://[^\n]*@[^\s@]*\s*$|"
                           r"\s*[a-zA-Z][a-zA-Z0-9+.\-]*://\S*\s*$")

_lock = threading.Lock()
_secrets: set[str] = set()
_secret_re: re.Pattern | None = None


def is_secret_name(name: object) -> bool:
    """Does a parameter/key name say its value is a secret (``api_token``, ``db_password``,
    ``secret``, ``api_key``; not ``max_tokens`` or ``pad_token``)?"""
    return bool(_SECRET_NAME_RE.search(str(name)))


def _variants(value: str) -> set[str]:
    forms = {value, unquote(value), quote(value, safe=""), quote(unquote(value), safe=""),
             quote_plus(value), quote_plus(unquote(value)), repr(value)[1:-1],
             json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1],
             value.replace("'", "''"), html.escape(value), html.escape(value, quote=False)}
    return {f for f in forms if len(f) >= MIN_SECRET_LENGTH}


def register_secret(value: object) -> None:
    """Mask ``value`` (and its encoded forms) in everything written from now on."""
    global _secret_re
    text = str(value) if value is not None else ""
    if len(text) < MIN_SECRET_LENGTH or text == MASK:
        return
    new = _variants(text) - _secrets
    if not new:
        return
    with _lock:
        _secrets.update(new)
        ordered = sorted(_secrets, key=len, reverse=True)  # longest first: no partial leftovers
        _secret_re = re.compile("|".join(re.escape(s) for s in ordered))


def url_passwords(url: str) -> set[str]:
    """Every string some parser would take for the password of ``url`` (SQLAlchemy, urllib, the
    last-``@`` rule), plus secret-looking query values; empty when there is none."""
    found: set[str] = set()
    text = str(url).strip()
    m = re.match(r"[a-zA-Z][a-zA-Z0-9+.\-]*://", text)
    if not m:
        return found
    rest = text[m.end():]
    if "@" in rest:
        userinfo = rest[:rest.rfind("@")]           # the last "@": passwords may hold "@", "/"
        if ":" in userinfo:
            found.add(userinfo.split(":", 1)[1])
        head = rest.split("/", 1)[0]
        if "@" in head and ":" in head[:head.rfind("@")]:
            found.add(head[:head.rfind("@")].split(":", 1)[1])
    try:
        parts = urlsplit(text)
        if parts.password:
            found.add(parts.password)
        found.update(v for k, v in parse_qsl(parts.query) if is_secret_name(k)
                     or re.search(r"(?i)password|passwd|pwd|token|secret|key", k))
    except ValueError:
        pass
    try:
        from sqlalchemy.engine import make_url
        sa_url = make_url(text)
        if sa_url.password:
            found.add(str(sa_url.password))
    except Exception:  # not installed, or not a URL SQLAlchemy understands
        pass
    return {f for f in found if f}


def register_url(url: object) -> None:
    """Register the password(s) of a URL seen whole (``--storage``, ``--tracking-uri``...)."""
    if url is None:
        return
    for password in url_passwords(str(url)):
        register_secret(password)


def mask_credentials(text: object) -> str:
    """``text`` with registered secrets, ``user:password@`` in URLs and secret query values
    replaced by ``***`` (``postgresql://***@host/db``). A whole URL is registered first."""
    text = str(text)
    if "://" in text and _WHOLE_URL_RE.match(text):
        register_url(text)  # text that is one URL (its password may hold spaces)
    pattern = _secret_re
    if pattern is not None:
        text = pattern.sub(MASK, text)
    text = _CRED_RE.sub(lambda m: f"{m.group('scheme')}{MASK}@", text)
    return _QUERY_SECRET_RE.sub(r"\1***", text)


def mask_tree(value: Any, key: object = None) -> Any:
    """A copy of a nested dict/list with secret-named values replaced by ``***`` (and
    registered) and every string masked by :func:`mask_credentials`."""
    if key is not None and is_secret_name(key) and value not in (None, "", {}, []):
        for leaf in _leaves(value):
            register_secret(leaf)
        return MASK
    if isinstance(value, dict):
        return {k: mask_tree(v, k) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(mask_tree(v) for v in value)
    if isinstance(value, str):
        return mask_credentials(value)
    return value


def register_tree(value: Any) -> None:
    """Register the secret-named values and URL passwords of a nested dict/list (no copy)."""
    mask_tree(value)


def _leaves(value: Any):
    if isinstance(value, dict):
        for v in value.values():
            yield from _leaves(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _leaves(v)
    elif value is not None:
        yield str(value)


# ------------------------------------------------------------------------------- printing safely

def safe_text(text: object, keep_newlines: bool = False) -> str:
    """``text`` with control and format characters (ESC, ``\\r``, BEL, C1, bidi overrides, line
    separators) escaped as ``\\x1b`` / ``\\u202e``, so a user-supplied name cannot move the
    cursor, recolour or forge output lines. ``keep_newlines``: ``\\n`` and ``\\t`` pass."""
    out = []
    for ch in str(text):
        if keep_newlines and ch in "\n\t":
            out.append(ch)
        elif unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp"):
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)


def safe_output(text: object) -> str:
    """A printed line: credentials masked, control characters escaped (newlines kept)."""
    return safe_text(mask_credentials(text), keep_newlines=True)


# ----------------------------------------------------------------------------------------- logs

_installed = False


def install_log_masking() -> None:
    """Mask every log record, of every logger and handler, when it is created: the message
    (arguments merged) and the traceback text. Idempotent; also routes ``warnings`` to logging."""
    global _installed
    if _installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args, **kwargs):
        record = previous(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: leave it to the handler to report
            return record
        record.msg, record.args = safe_output(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = mask_credentials(logging.Formatter().formatException(
                record.exc_info))
        return record

    logging.setLogRecordFactory(factory)
    logging.captureWarnings(True)
    _installed = True
