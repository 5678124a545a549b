"""The otel-cb config file: where it is found, how it is read, and its validation.

Sources, first match wins: an explicit path or mapping; the file named by
``OTEL_CB_CONFIG``; ``./otel-cb.yaml``; the ``[tool.otel-cb]`` table of
``./pyproject.toml``; built-in defaults. The shape::

    circuit_breakers:
      defaults: {preset: default}
      sentinel_client: {preset: aggressive, match: {http: ["http://sentinel:8080"]}}
    auto_breakers: {enabled: true, max: 1000}
    plugins: {my_plugin: {...}}      # free-form, read by plugins in otel_cb_configure

Every breaker section is laid over ``defaults``; the core fields are checked
by ``CircuitBreakerConfig.from_dict``, ``match:`` rules here, and every other
key by the plugin that declares it through ``otel_cb_config_keys`` (this
module names no integration; a key no plugin declares is unknown). Every
problem is reported with its location (file, line for YAML, and the key
path); validation collects all of them rather than stopping at the first (the
collector, ``Problems`` and the "did you mean" suggestions live in
``_problems``; value masking in ``_redact``).

Reading is bounded (``MAX_FILE_BYTES``, ``MAX_DEPTH``, ``MAX_VALUES`` with YAML
aliases expanded, ``MAX_BREAKERS``), and YAML is parsed once, with libyaml
when installed, so hostile input gets one error quickly. ``load(...,
import_modules=False)`` checks without importing any module a config names.

Routing (what ``match:`` means for a call) lives in ``_routing``; this module
only normalises the patterns.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ._config import MAX_COUNT, CircuitBreakerConfig, config_from_dict
from ._problems import Collector as _Collector
from ._problems import Problem, unknown_key
from ._redact import shown

__all__ = [
    "BreakerSection",
    "ConfigError",
    "MAX_BREAKERS",
    "MAX_DEPTH",
    "MAX_FILE_BYTES",
    "MAX_VALUES",
    "Problem",
    "Settings",
    "find_source",
    "load",
    "normalize_pattern",
]

logger = logging.getLogger("otel_cb")

CONFIG_ENV = "OTEL_CB_CONFIG"
DEFAULT_FILE = "otel-cb.yaml"
PYPROJECT_TABLE = "otel-cb"
KINDS = ("http", "grpc", "db")
_TOP_LEVEL = ("circuit_breakers", "auto_breakers", "plugins")
_CORE_KEYS = frozenset(f for f in CircuitBreakerConfig.__dataclass_fields__) | {"preset"}
_SECTION_KEYS = _CORE_KEYS | {"match"}
_DEFAULT_AUTO_MAX = 1000


class ConfigError(ValueError):
    """The config does not validate; ``problems`` lists every error with its location."""

    def __init__(self, source: str, problems: list[Problem]) -> None:
        self.source = source
        self.problems = problems
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        super().__init__(f"invalid config: {problems[0]}{more}")


@dataclass(frozen=True, slots=True)
class BreakerSection:
    """One configured breaker.

    Attributes:
        name: The breaker's name (the section's key).
        config: Its validated core settings.
        match: Normalised ``match:`` patterns per call kind.
        raw: The section laid over ``defaults``, as plain data (integration keys included).
    """

    name: str
    config: CircuitBreakerConfig
    match: Mapping[str, tuple[str, ...]]
    raw: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Settings:
    """A loaded, validated configuration.

    Attributes:
        source: Where it came from, for messages (a path, ``"<mapping>"``, ``"defaults"``).
        data: The whole configuration as read (read-only), for ``otel_cb_configure``.
        defaults: Config of breakers that no section configures (automatic ones).
        default_section: The raw ``defaults`` section.
        breakers: Every configured breaker, in file order.
        auto_enabled: Whether calls no rule matches get an automatic breaker.
        auto_max: How many automatic breakers at most before the overflow breaker.
    """

    source: str
    data: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    defaults: CircuitBreakerConfig = field(default_factory=CircuitBreakerConfig)
    default_section: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    breakers: tuple[BreakerSection, ...] = ()
    auto_enabled: bool = True
    auto_max: int = _DEFAULT_AUTO_MAX


# -- finding and reading ----------------------------------------------------------


MAX_FILE_BYTES = 128 * 1024
"""A config file larger than this (128 KiB) is refused unread: reading one that size takes well under a second."""
MAX_DEPTH = 50
"""Deepest nesting of mappings and lists a config may have."""
MAX_VALUES = 50_000
"""Most values (keys, scalars, collections) a config may hold, counted after YAML aliases are expanded."""
MAX_BREAKERS = 2_000
"""Most named sections ``circuit_breakers:`` may hold."""


def find_source(config: str | os.PathLike[str] | None = None, *, cwd: Path | None = None,
                label: str = "config") -> Path | None:
    """Return the file to read for ``config`` (None: no file, use defaults).

    Args:
        config: The path given, or None to search.
        cwd: Directory to search and resolve relative paths in.
        label: What the path was given as, for the error (``"config"``, ``"--config"``).

    Raises:
        ConfigError: if an explicitly named file (argument or ``OTEL_CB_CONFIG``) does not exist.
    """
    base = Path.cwd() if cwd is None else cwd
    if config is None:
        env = os.environ.get(CONFIG_ENV, "").strip()
        if env:
            return _existing(base / env, CONFIG_ENV)
        candidate = base / DEFAULT_FILE
        if candidate.is_file():
            return candidate
        pyproject = base / "pyproject.toml"
        if pyproject.is_file() and _pyproject_has_table(pyproject):
            return pyproject
        return None
    return _existing(base / Path(config), label)


def _existing(path: Path, what: str) -> Path:
    try:
        found = path.is_file()
    except (OSError, ValueError):  # a name the file system refuses (too long, NUL byte)
        found = False
    if not found:
        raise ConfigError(str(path), [Problem(what, f"{shown(str(path))} is not a readable file")])
    return path


def _pyproject_has_table(path: Path) -> bool:
    # A cheap check first: most pyproject.toml files have no otel-cb table, and
    # parsing TOML at every start-up would cost more than reading the bytes.
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            return False
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    return f"[tool.{PYPROJECT_TABLE}" in text or f'"{PYPROJECT_TABLE}"' in text


def load(config: str | os.PathLike[str] | Mapping[str, Any] | None = None, *, cwd: Path | None = None,
         import_modules: bool = True, label: str = "config") -> Settings:
    """Find, read and validate the configuration.

    Args:
        config: A file path (YAML, or TOML: a ``pyproject.toml`` is read at
            ``[tool.otel-cb]``), a mapping of plain data, or None to search
            (``OTEL_CB_CONFIG``, ``./otel-cb.yaml``, ``./pyproject.toml``, defaults).
        cwd: Directory to search and resolve relative paths in (default: the current one).
        import_modules: False to check without importing any module an
            exception name refers to (``otel-cb config check``); the result is
            then fit for checking only.
        label: What ``config`` was given as, for a missing file's error.

    Raises:
        ConfigError: listing every problem with its location.
    """
    if isinstance(config, Mapping):
        return validate(config, source="<mapping>", import_modules=import_modules)
    if config is not None and not isinstance(config, (str, os.PathLike)):
        raise ConfigError("<argument>", [Problem(label, f"{shown(config)} is not allowed; use a file path, a "
                                                       "mapping of settings or None")])
    path = find_source(config, cwd=cwd, label=label)
    if path is None:
        return Settings(source="defaults")
    data, lines = _read(path)
    return validate(data, source=str(path), lines=lines, import_modules=import_modules)


def _read(path: Path) -> tuple[Any, Mapping[tuple[str, ...], int]]:
    source = str(path)
    try:
        with path.open("rb") as file:
            raw = file.read(MAX_FILE_BYTES + 1)
        if len(raw) > MAX_FILE_BYTES:
            raise ConfigError(source, [Problem(source, f"larger than {MAX_FILE_BYTES // 1024} KiB, the limit of a "
                                                       "config file")])
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(source, [Problem(source, f"cannot read: {exc}")]) from None
    if path.suffix == ".toml":
        return _read_toml(source, text, path.name == "pyproject.toml"), {}
    return _read_yaml(source, text)


def _read_toml(source: str, text: str, pyproject: bool) -> Any:
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]
    try:
        data = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, ValueError) as exc:
        raise ConfigError(source, [Problem(source, f"not valid TOML: {_parse_error(exc)}")]) from None
    except RecursionError:
        raise ConfigError(source, [Problem(source, f"nested more than {MAX_DEPTH} levels deep")]) from None
    if pyproject or "tool" in data:
        table = data.get("tool", {})
        return table.get(PYPROJECT_TABLE, {}) if isinstance(table, Mapping) else {}
    return data


def _read_yaml(source: str, text: str) -> tuple[Any, Mapping[tuple[str, ...], int]]:
    """Parse once, with libyaml (PyYAML's C loader) when present: it also refuses nesting beyond 1000 levels."""
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)(text)
    try:
        node = loader.get_single_node()
        lines: dict[tuple[str, ...], int] = {}
        if node is None:
            return {}, lines
        _collect_lines(node, (), lines, [0])
        data = loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        problem = str(getattr(exc, "problem", None) or exc).strip()
        raise ConfigError(source, [Problem(where, f"not valid YAML: {problem}")]) from None
    except RecursionError:
        # The pure-Python composer recurses per level; libyaml stops at 1000 levels by itself.
        raise ConfigError(source, [Problem(source, f"nested more than {MAX_DEPTH} levels deep; that is the "
                                                   "limit")]) from None
    except (ValueError, OverflowError) as exc:
        # int() of a number with thousands of digits, a malformed timestamp, ...
        raise ConfigError(source, [Problem(source, f"not valid YAML: {_parse_error(exc)}")]) from None
    finally:
        loader.dispose()
    return ({} if data is None else data), lines


def _parse_error(exc: Exception) -> str:
    text = str(exc)
    if "integer string conversion" in text:
        return "a number of thousands of digits; no setting takes one"
    return text[:200]


def _collect_lines(node: Any, path: tuple[str, ...], lines: dict[tuple[str, ...], int], seen: list[int]) -> None:
    import yaml

    if isinstance(node, yaml.MappingNode) and len(path) < MAX_DEPTH:
        for key, value in node.value:
            seen[0] += 1
            if seen[0] > MAX_VALUES:
                return  # aliases expanding without end: the size check reports it, its lines do not matter
            child = (*path, str(key.value)[:200])
            lines.setdefault(child, key.start_mark.line + 1)
            _collect_lines(value, child, lines, seen)


def _shape_problem(data: object) -> str | None:
    """Why ``data`` is too deep, too large (aliases expanded) or circular; None when it is fine."""
    def children(value: object) -> list[object] | None:
        if isinstance(value, Mapping):
            return [*value.keys(), *value.values()]
        if isinstance(value, (list, tuple, set, frozenset)):
            return list(value)
        return None

    top = children(data)
    if top is None:
        return None
    sizes: dict[int, int] = {}
    active = {id(data)}
    stack: list[list[Any]] = [[data, iter(top), 1]]  # [value, its children, size so far]
    end = object()
    while stack:
        frame = stack[-1]
        child = next(frame[1], end)
        if child is end:
            stack.pop()
            active.discard(id(frame[0]))
            sizes[id(frame[0])] = frame[2]
            if stack:
                stack[-1][2] += frame[2]
                if stack[-1][2] > MAX_VALUES:
                    break
            continue
        kids = children(child)
        if kids is None:
            frame[2] += 1
        elif id(child) in active:
            return "a value contains itself (a recursive alias or reference); not allowed"
        elif id(child) in sizes:
            frame[2] += sizes[id(child)]
        elif len(stack) >= MAX_DEPTH:
            return f"nested more than {MAX_DEPTH} levels deep; that is the limit"
        else:
            active.add(id(child))
            stack.append([child, iter(kids), 1])
            continue
        if frame[2] > MAX_VALUES:
            break
    if stack or sizes.get(id(data), 0) > MAX_VALUES:
        return f"holds more than {MAX_VALUES:,} values once aliases are expanded; that is the limit"
    return None


# -- validation -------------------------------------------------------------------


def validate(data: object, *, source: str, lines: Mapping[tuple[str, ...], int] | None = None,
             import_modules: bool = True) -> Settings:
    """Validate plain data as read from a file.

    Args:
        data: The whole config.
        source: Where it came from, for messages.
        lines: Line of each key path, for messages.
        import_modules: As ``load``.

    Raises:
        ConfigError: listing every problem with its location.
    """
    problems = _Collector(source, lines or {})
    from . import _plugins

    plugin_keys = _plugins.config_keys()
    if not isinstance(data, Mapping):
        problems.add((), f"{shown(data)} is not allowed; the config must be a mapping with keys "
                     f"{', '.join(_TOP_LEVEL)}")
        raise ConfigError(source, problems.problems)
    shape = _shape_problem(data)
    if shape is not None:
        problems.add((), shape)
        raise ConfigError(source, problems.problems)
    for key in data:
        if key not in _TOP_LEVEL:
            problems.add((_key(key),), unknown_key(key, data[key], _TOP_LEVEL))
    plugins = data.get("plugins", {})
    if not isinstance(plugins, Mapping):
        problems.add(("plugins",), f"{shown(plugins)} is not allowed; use a mapping of plugin name to settings")
    auto_enabled, auto_max = _auto(data.get("auto_breakers", {}), problems)
    breakers = data.get("circuit_breakers", {})
    if breakers is None:
        breakers = {}
    if not isinstance(breakers, Mapping):
        problems.add(("circuit_breakers",), f"{shown(breakers)} is not allowed; use a mapping of breaker name "
                     "to settings")
        breakers = {}
    if len(breakers) > MAX_BREAKERS:
        problems.add(("circuit_breakers",), f"{len(breakers):,} sections; at most {MAX_BREAKERS:,} are allowed "
                     "(auto_breakers covers the rest)")
        breakers = {}
    default_raw = breakers.get("defaults") or {}
    defaults = CircuitBreakerConfig()
    if not isinstance(default_raw, Mapping):
        problems.add(("circuit_breakers", "defaults"), f"{shown(default_raw)} is not allowed; use a mapping of "
                     "settings")
        default_raw = {}
    elif "match" in default_raw:
        problems.add(("circuit_breakers", "defaults", "match"), "not allowed in defaults; put match rules in a "
                     "named breaker section")
    else:
        defaults = _section_config(("circuit_breakers", "defaults"), default_raw, problems, plugin_keys,
                                   import_modules) or defaults
        _plugin_settings("defaults", ("circuit_breakers", "defaults"), default_raw, problems, plugin_keys)
    sections = []
    for name, raw in breakers.items():
        if name == "defaults":
            continue
        path = ("circuit_breakers", _key(name))
        if not isinstance(name, str) or not name.strip() or len(name) > 200:
            problems.add(("circuit_breakers",), f"breaker name {shown(name)} is not allowed; use a non-empty string "
                         "of at most 200 characters")
            continue
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            problems.add(path, f"{shown(raw)} is not allowed; use a mapping of settings")
            continue
        merged = {**default_raw, **raw}
        config = _section_config(path, merged, problems, plugin_keys, import_modules)
        match = _match(path, raw.get("match", {}), problems)
        _plugin_settings(name, path, merged, problems, plugin_keys)
        if config is not None:
            merged.pop("match", None)
            sections.append(BreakerSection(name, config, match, MappingProxyType(merged)))
    if problems.problems:
        raise ConfigError(source, problems.sorted())
    return Settings(
        source=source,
        data=MappingProxyType(dict(data)),
        defaults=defaults,
        default_section=MappingProxyType(dict(default_raw)),
        breakers=tuple(sections),
        auto_enabled=auto_enabled,
        auto_max=auto_max,
    )


def _key(key: object) -> str:
    """A key as it appears in a location: strings as they are, anything else shortened."""
    return key[:200] if isinstance(key, str) else shown(key)


def _auto(raw: object, problems: _Collector) -> tuple[bool, int]:
    path = ("auto_breakers",)
    if raw is None:
        return True, _DEFAULT_AUTO_MAX
    if not isinstance(raw, Mapping):
        problems.add(path, f"{shown(raw)} is not allowed; use a mapping with keys enabled, max")
        return True, _DEFAULT_AUTO_MAX
    enabled = raw.get("enabled", True)
    maximum = raw.get("max", _DEFAULT_AUTO_MAX)
    for key in raw:
        if key not in ("enabled", "max"):
            problems.add((*path, _key(key)), unknown_key(key, raw[key], ("enabled", "max")))
    if not isinstance(enabled, bool):
        problems.add((*path, "enabled"), f"{shown(enabled)} is not allowed; use true or false")
        enabled = True
    if isinstance(maximum, bool) or not isinstance(maximum, int) or not 1 <= maximum <= MAX_COUNT:
        problems.add((*path, "max"), f"{shown(maximum)} is not allowed; use a whole number >= 1, at most "
                     f"{MAX_COUNT:,}")
        maximum = _DEFAULT_AUTO_MAX
    return enabled, maximum


def _section_config(path: tuple[str, ...], raw: Mapping[str, Any], problems: _Collector,
                    plugin_keys: Mapping[str, Any], import_modules: bool = True) -> CircuitBreakerConfig | None:
    for key in raw:
        if key not in _SECTION_KEYS and key not in plugin_keys:
            problems.add((*path, _key(key)), unknown_key(key, raw[key], _SECTION_KEYS | set(plugin_keys), "setting"))
    core = {k: v for k, v in raw.items() if k in _CORE_KEYS}
    try:
        return config_from_dict(core, import_modules=import_modules)
    except ValueError as exc:
        problems.add_error(path, exc, _CORE_KEYS)
        return None


_HTTP_PATTERN = re.compile(r"^(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*)://(?P<host>\[[^\]]+\]|[^/:?#@\[\]]+)"
                           r"(?::(?P<port>\d+|\*))?/?$")
_HOST_PORT = re.compile(r"^(?P<host>\[[^\]]+\]|[^/:?#@\[\]]+)(?::(?P<port>\d+|\*))?$")
_DEFAULT_PORTS = {"http": "80", "https": "443", "postgresql": "5432", "postgres": "5432"}


def normalize_pattern(kind: str, pattern: str) -> str:
    """Return ``pattern`` in the form ``Call.target`` (or a gRPC service/method) takes.

    HTTP ``scheme://host[:port]`` gets its default port; a database URL
    ``postgresql://[user@]host[:port]/db`` becomes ``host:port/db``; gRPC
    patterns are a target ``host:port``, a service ``pkg.Service`` or a method
    ``/pkg.Service/Method``. ``*`` matches any run of characters.

    Raises:
        ValueError: naming the pattern and the accepted forms.
    """
    text = pattern.strip()
    if kind == "http":
        m = _HTTP_PATTERN.match(text)
        if not m:
            raise ValueError(f"{shown(pattern)} is not allowed; use 'scheme://host[:port]' without credentials, path "
                             "or query (e.g. 'http://sentinel:8080'; '*' matches any part)")
        scheme = m["scheme"].lower()
        if scheme not in ("http", "https"):
            raise ValueError(f"{shown(pattern)} is not allowed; the scheme must be http or https")
        return f"{scheme}://{m['host'].lower()}:{m['port'] or _DEFAULT_PORTS[scheme]}"
    if kind == "db":
        if "://" in text:
            scheme, _, rest = text.partition("://")
            rest = rest.rpartition("@")[2]  # credentials never take part in routing
            hostport, _, database = rest.partition("/")
            database = database.partition("?")[0]
        else:
            scheme = "postgresql"
            hostport, _, database = text.partition("/")
        m = _HOST_PORT.match(hostport)
        if not m or not database or "/" in database:
            raise ValueError(f"{shown(pattern)} is not allowed; use 'postgresql://host[:port]/dbname' or "
                             "'host:port/dbname' ('*' matches any part)")
        port = m["port"] or _DEFAULT_PORTS.get(scheme.lower(), "5432")
        return f"{m['host'].lower()}:{port}/{database}"
    if kind == "grpc":
        if not text or any(c.isspace() for c in text) or "://" in text:
            raise ValueError(f"{shown(pattern)} is not allowed; use a service 'pkg.Service', a method "
                             "'/pkg.Service/Method' or a target 'host:port'")
        return text
    raise ValueError(f"{shown(kind)} is not a call kind; use one of {', '.join(KINDS)}")


def _match(path: tuple[str, ...], raw: object, problems: _Collector) -> Mapping[str, tuple[str, ...]]:
    here = (*path, "match")
    if raw is None:
        return MappingProxyType({})
    if not isinstance(raw, Mapping):
        problems.add(here, f"{shown(raw)} is not allowed; use a mapping with keys {', '.join(KINDS)}")
        return MappingProxyType({})
    result: dict[str, tuple[str, ...]] = {}
    for kind, patterns in raw.items():
        if kind not in KINDS:
            problems.add((*here, _key(kind)), unknown_key(kind, patterns, KINDS, "call kind"))
            continue
        if isinstance(patterns, str):
            patterns = [patterns]
        if not isinstance(patterns, list) or not all(isinstance(p, str) and len(p) <= 1000 for p in patterns):
            problems.add((*here, kind), f"{shown(patterns)} is not allowed; use a list of strings (each at most "
                         "1000 characters)")
            continue
        normalized = []
        for pattern in patterns:
            try:
                normalized.append(normalize_pattern(kind, pattern))
            except ValueError as exc:
                problems.add((*here, kind), str(exc))
        result[kind] = tuple(normalized)
    return MappingProxyType(result)


def _plugin_settings(name: str, path: tuple[str, ...], raw: Mapping[str, Any], problems: _Collector,
                     plugin_keys: Mapping[str, list[tuple[str, Any]]]) -> None:
    """Check each plugin-declared key of a section with its plugin's validator, one key at a time."""
    for key, value in raw.items():
        for plugin_name, validate_settings in plugin_keys.get(key, ()) if isinstance(key, str) else ():
            try:
                validate_settings(name, {key: value})
            except ValueError as exc:
                # Some validators name the field in full (circuit_breakers.<name>.<key>): point at the key either way.
                message, prefix = str(exc), f"circuit_breakers.{name}."
                problems.add_error(path, ValueError(message.removeprefix(prefix)), frozenset({key}))
            except Exception as exc:
                # What the check cannot vouch for would fail at run time: a problem, never a pass.
                problems.add((*path, key), f"{shown(value)} could not be checked ({type(exc).__name__} in plugin "
                             f"{plugin_name!r}); it is not allowed")
