"""Validation problems: how a check reports what is wrong, one problem or many.

A validator (``CircuitBreakerConfig``, the config loader, an integration
checking its own section) raises ``ValueError("field: message")`` for one
problem or ``Problems([...])`` for several; the loader's ``Collector`` turns
each into a ``Problem`` located by file, line and key path. ``did_you_mean()``
is the one place that suggests a known name for a misspelled one, and
``unknown_key()`` the one wording of an unknown-key message. Every message is
secret-masked (``otel_cb._redact``) when it becomes a ``Problem``.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

from ._redact import is_secret_name, mask, shown

__all__ = ["Collector", "Problem", "Problems", "did_you_mean", "unknown_key"]


_MAX_MESSAGE = 1000


def _bounded(text: str, limit: int) -> str:
    # A validator that printed a value in full must still not print megabytes, nor break the one-line promise.
    text = " ".join(text.splitlines()) if "\n" in text or "\r" in text else text
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True, slots=True)
class Problem:
    """One validation error: where it is and what is wrong (naming value and what is allowed)."""

    location: str
    message: str

    def __post_init__(self) -> None:
        # The single door every problem passes: nothing it says can leak a secret.
        object.__setattr__(self, "location", _bounded(mask(self.location), 300))
        object.__setattr__(self, "message", _bounded(mask(self.message), _MAX_MESSAGE))

    def __str__(self) -> str:
        return f"{self.location}: {self.message}"


class Problems(ValueError):
    """Several problems of one validated thing, each a ``ValueError("field: message")``.

    Raised instead of a single ``ValueError`` when a validator found more than
    one problem, so every one is reported, not only the first.
    """

    def __init__(self, errors: Iterable[ValueError]) -> None:
        flat: list[ValueError] = []
        for error in errors:
            flat.extend(error.errors if isinstance(error, Problems) else [error])
        self.errors: tuple[ValueError, ...] = tuple(flat)
        super().__init__("; ".join(str(e) for e in self.errors))

    @staticmethod
    def raise_if_any(errors: list[ValueError]) -> None:
        """Raise the one error, or ``Problems`` of several; nothing when the list is empty."""
        if len(errors) == 1:
            raise errors[0]
        if errors:
            raise Problems(errors)


def did_you_mean(name: object, known: Collection[str]) -> str | None:
    """The known name ``name`` is most likely a misspelling of, or None."""
    if not isinstance(name, str):
        return None
    import difflib

    lowered = {k.lower(): k for k in known}
    if name.lower() in lowered:
        return lowered[name.lower()]
    matches = difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=0.75)
    return lowered[matches[0]] if matches else None


def unknown_key(name: object, value: object, known: Collection[str], what: str = "key") -> str:
    """The message for an unknown key: a suggestion when one is close, else the allowed names."""
    suggestion = did_you_mean(name, known)
    hint = f"did you mean {suggestion}?" if suggestion else f"allowed {what}s: {', '.join(sorted(known))}"
    shown_value = "'***'" if is_secret_name(name) else shown(value)
    return f"unknown {what} (value {shown_value}); {hint}"


class Collector:
    """Gathers the problems of one source, each located by file, line and key path."""

    def __init__(self, source: str, lines: Mapping[tuple[str, ...], int]) -> None:
        self.source = source
        self.lines = lines
        self.problems: list[Problem] = []
        self.order: list[int] = []

    def add(self, path: tuple[str, ...], message: str) -> None:
        """Add one problem at ``path`` (keys from the top of the document)."""
        line: int | None = None
        for depth in range(len(path), 0, -1):
            line = self.lines.get(path[:depth])
            if line is not None:
                break
        where = f"{self.source}:{line}" if line is not None else self.source
        key = ".".join(path)
        self.problems.append(Problem(f"{where}: {key}" if key else where, message))
        self.order.append(line or 0)

    def add_error(self, path: tuple[str, ...], error: ValueError, fields: Collection[str]) -> None:
        """Add a validator's error (each of a ``Problems``).

        A message starting with one of ``fields`` (``"open_timeout: ..."``,
        ``"fallback.ttl: ..."``) is located at that key below ``path``.
        """
        for one in error.errors if isinstance(error, Problems) else (error,):
            message = str(one)
            head, sep, rest = message.partition(": ")
            keys = tuple(head.split("."))
            if sep and keys[0] in fields:
                self.add((*path, *keys), rest)
            else:
                self.add(path, message)

    def sorted(self) -> list[Problem]:
        """The problems in file order (the order a reader fixes them in)."""
        return [p for _, p in sorted(zip(self.order, self.problems, strict=True), key=lambda item: item[0])]
