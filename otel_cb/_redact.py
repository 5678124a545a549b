"""Secret masking: the one place that decides what of a value otel-cb may print.

Every value an error message, a log line or an ``otel-cb`` command shows goes
through ``shown()`` (a bounded, masked ``repr``) or ``mask()`` (masking of text
already written): the user-info part of any URL (``redis://user:pw@host``
becomes ``redis://***@host``) and the value of any password-like parameter
(``?password=...``, ``token=...``, libpq's ``password=...``) are replaced by
``***``. Masking works on text, not on parsed URLs, so a malformed URL
(``redis://u:pw@[::1``) is masked as well as a valid one. ``origin()`` is
the stricter form for announcing an endpoint: scheme, host and port only.

Log records of otel-cb's loggers (``LOGGERS``) pass through ``MaskingFilter``,
installed on import of this module (``otel_cb._config`` imports it, so
``import otel_cb`` does).
"""

from __future__ import annotations

import logging
import re
import reprlib
from collections.abc import Mapping
from typing import Any

__all__ = ["LOGGERS", "MaskingFilter", "is_secret_name", "mask", "origin", "shown"]

# scheme://userinfo@: up to the last '@' of the token, so an unencoded '/' or '@' in a password is masked too
# (at worst a path holding an '@' is hidden with it).
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^\s'\"]*@)")
# user:password@host without a scheme (an address typed on a command line, a DSN fragment).
_BARE_USERINFO = re.compile(r"(?<![\w/@])[^\s'\"/@:]+:[^\s'\"/@]*@")
_SECRET_WORDS = ("password", "passwd", "pwd", "pass", "secret", "token", "access_token", "auth", "api_key",
                 "apikey", "api-key", "sslpassword", "client_secret", "credentials", "key")
_NAME = (r"(?<![A-Za-z0-9_\-])(?:[A-Za-z0-9]+[_\-])*(?:" + "|".join(re.escape(p) for p in _SECRET_WORDS) + r")")
# A key is treated as secret on a looser match (misspellings such as "pasword" included): over-masking is harmless.
_SECRET_NAME = re.compile(f"^{_NAME}$|pa+s+w|pass|pwd|secret|token|auth|cred", re.IGNORECASE)
# name=value (query strings, libpq DSNs, log text) and 'name': value (reprs of mappings)
_PARAM = re.compile(
    f"(?P<name>{_NAME})(?P<sep>\\s*=\\s*)(?P<value>'[^']*'|\"[^\"]*\"|[^\\s&;,'\"]+)", re.IGNORECASE)
_QUOTED_PARAM = re.compile(
    f"(?P<name>(?P<q>['\"]){_NAME}(?P=q))(?P<sep>\\s*:\\s*)(?P<value>'[^']*'|\"[^\"]*\"|[^\\s,}}\\]]+)",
    re.IGNORECASE)

LOGGERS = ("otel_cb", "otel_cb.shared", "otel_cb.admin")
"""Every logger otel-cb logs through; each one's records are masked."""

_MAX_SHOWN = 80


def mask(text: str) -> str:
    """Return ``text`` with URL user-info and password-like parameter values replaced by ``***``."""
    if "@" in text:
        text = _USERINFO.sub(r"\g<scheme>***@", text)
        text = _BARE_USERINFO.sub("***@", text)
    if "=" in text:
        text = _PARAM.sub(r"\g<name>\g<sep>***", text)
    if ":" in text:
        text = _QUOTED_PARAM.sub(r"\g<name>\g<sep>'***'", text)
    return text


def is_secret_name(name: object) -> bool:
    """Whether a key or parameter named ``name`` holds a secret (``password``, ``api_key``, ``X-Auth-Token``...)."""
    return isinstance(name, str) and _SECRET_NAME.search(name) is not None


def origin(url: str) -> str:
    """Only ``scheme://host[:port]`` of ``url``: no credentials, path or query (where an endpoint is announced)."""
    scheme, sep, rest = url.strip().partition("://")
    if not sep:
        scheme, rest = "", scheme
    hostport = rest.partition("/")[0].partition("?")[0].partition("#")[0].rpartition("@")[2]
    return f"{scheme}://{hostport}" if scheme else hostport


class _BoundedRepr(reprlib.Repr):
    """``repr`` that stays short whatever it is given: deep, wide, aliased or huge values."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel = 3
        self.maxdict = 4
        self.maxlist = self.maxtuple = self.maxset = self.maxfrozenset = 4
        self.maxstring = 200  # long enough that masking sees a whole URL before shortening
        self.maxlong = 40
        self.maxother = 60

    def repr_str(self, x: str, level: int) -> str:
        # Masked before it is shortened: cutting first could drop the '@' that marks a password.
        return super().repr_str(mask(x), level)

    def repr_dict(self, x: dict[Any, Any], level: int) -> str:
        if any(is_secret_name(k) for k in list(x)[: self.maxdict]):
            x = {k: _Hidden() if is_secret_name(k) else v for k, v in list(x.items())[: self.maxdict + 1]}
        return super().repr_dict(x, level)

    def repr_int(self, x: int, level: int) -> str:
        # repr() of an int beyond sys.get_int_max_str_digits() raises; say how big it is instead.
        if x.bit_length() > 128:
            return f"<an integer of about {int(x.bit_length() * 0.30103)} digits>"
        return repr(x)


class _Hidden:
    def __repr__(self) -> str:
        return "'***'"


_repr = _BoundedRepr()


def shown(value: object, limit: int = _MAX_SHOWN) -> str:
    """A ``repr`` of ``value`` fit for a message: bounded in time and size, secrets masked, at most ``limit`` chars."""
    if isinstance(value, Mapping) and not isinstance(value, dict):
        value = dict(value)  # so that values under secret names are hidden, as for a dict
    try:
        text = _repr.repr(value)
    except Exception:
        text = f"<{type(value).__name__}>"
    text = mask(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class MaskingFilter(logging.Filter):
    """Masks secrets in a record's final message (arguments included) before any handler sees it."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            return True  # a broken format string is logging's own error to report
        masked = mask(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
            formatted = logging.Formatter().formatException(record.exc_info)
            record.exc_text = mask(formatted)
        return True


def _install() -> None:
    # A logger's filters do not see the records its children propagate, so each
    # logger otel-cb uses gets the filter itself (tests check LOGGERS lists them all).
    masking = MaskingFilter()
    for name in LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, MaskingFilter) for f in logger.filters):
            logger.addFilter(masking)


_install()
