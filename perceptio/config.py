"""Typed, validated, serialisable configuration dataclasses.

Every part of a model is described by a dataclass deriving from :class:`Config`.
Configs

* validate themselves at construction (``__post_init__`` calls ``validate``), with
  messages that name the field and the fix;
* round-trip exactly through plain dicts, JSON and YAML (``to_dict``/``from_dict``);
* reject unknown keys with the key path and the allowed keys.

Polymorphic fields (e.g. "some input adapter") are annotated with a base class that
owns a registry; the concrete class is chosen by the ``kind`` key of the dict. A kind's
name is written once, in ``@Base.register("name")``: it becomes the class attribute
``kind`` and the ``kind`` key of ``to_dict`` (it is not a dataclass field).

Fields annotated with ``Literal[...]`` are checked against their allowed values at
construction, so the allowed values are written once, in the annotation.

Every float of every config (in lists and mappings too) must be finite: ``lr: .nan`` or
``dropout: .inf`` is refused at construction, naming the field, so no run trains to NaN.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import types
import typing
from typing import Any, ClassVar, TypeVar

C = TypeVar("C", bound="Config")


class ConfigError(ValueError):
    """A configuration value is missing, unknown, of the wrong type or out of range."""


@dataclasses.dataclass
class Config:
    """Base class of all perceptio configs."""

    # Subclasses that act as a polymorphic base set ``_registry = {}``; concrete
    # classes register with ``@SomeBase.register("kind-name")``.
    _registry: ClassVar[dict[str, type[Config]] | None] = None
    # The registered name of a concrete polymorphic class (set by ``register``).
    kind: ClassVar[str | None] = None

    def __post_init__(self) -> None:
        for name, allowed in _literal_fields(type(self)).items():
            value = getattr(self, name)
            if value not in allowed:
                raise ConfigError(f"{type(self).__name__}.{name}={value!r}; allowed values: {list(allowed)}")
        for f in dataclasses.fields(self):
            where = non_finite(getattr(self, f.name), f.name)
            if where is not None:
                raise ConfigError(f"{type(self).__name__}.{where[0]} must be a finite number, got {where[1]!r} "
                                  f"(NaN and infinity are not allowed)")
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the field if a value is invalid."""

    # -- polymorphism -------------------------------------------------------------
    @classmethod
    def register(cls, kind: str):
        """Class decorator: make ``kind`` build the decorated subclass of ``cls``."""

        def wrap(sub: type[C]) -> type[C]:
            assert cls._registry is not None, f"{cls.__name__} is not a polymorphic base"
            assert kind not in cls._registry, f"{cls.__name__} kind {kind!r} is registered twice"
            cls._registry[kind] = sub
            sub.kind = kind
            return sub

        return wrap

    # -- serialisation ------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {} if self.kind is None else {"kind": self.kind}
        for f in dataclasses.fields(self):
            out[f.name] = _to_plain(getattr(self, f.name))
        return out

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any], _path: str = "") -> C:
        if isinstance(data, Config):
            return data  # type: ignore[return-value]
        if not isinstance(data, dict):
            raise ConfigError(f"{_path or cls.__name__}: expected a mapping, got {type(data).__name__}")
        target: type[Config] = cls
        if cls._registry is not None and cls.__dict__.get("_registry") is not None:
            kind = data.get("kind")
            if kind not in cls._registry:
                raise ConfigError(
                    f"{_join(_path, 'kind')}: unknown kind {kind!r}; allowed: {sorted(cls._registry)}"
                )
            target = cls._registry[kind]
        if target.kind is not None:
            if data.get("kind", target.kind) != target.kind:
                raise ConfigError(f"{_join(_path, 'kind')}: {target.__name__} has kind {target.kind!r}, "
                                  f"got {data['kind']!r}")
            data = {k: v for k, v in data.items() if k != "kind"}
        hints = typing.get_type_hints(target)
        names = {f.name for f in dataclasses.fields(target) if f.init}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(
                f"{_join(_path, unknown[0])}: unknown key; allowed keys: {sorted(names)}"
            )
        kwargs = {k: _from_plain(hints[k], v, _join(_path, k)) for k, v in data.items()}
        try:
            return target(**kwargs)  # type: ignore[return-value]
        except ConfigError as e:
            raise ConfigError(f"{_path + ': ' if _path else ''}{e}") from None
        except TypeError as e:  # a required field is missing
            raise ConfigError(f"{_path or target.__name__}: {e}") from None

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), indent=2, **kwargs)

    @classmethod
    def from_json(cls: type[C], text: str) -> C:
        return cls.from_dict(json.loads(text))

    def replace(self: C, **changes: Any) -> C:
        return dataclasses.replace(self, **changes)


@functools.cache
def _literal_fields(cls: type[Config]) -> dict[str, tuple[Any, ...]]:
    """``{field: allowed values}`` of the fields of ``cls`` annotated ``Literal[...]``
    (or ``Literal[...] | None``, which also allows None)."""
    out = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        args = typing.get_args(hint)
        if typing.get_origin(hint) is typing.Literal:
            out[f.name] = args
        elif typing.get_origin(hint) in (typing.Union, types.UnionType):
            literals = [a for a in args if typing.get_origin(a) is typing.Literal]
            if len(literals) == 1 and len(args) == 2 and type(None) in args:
                out[f.name] = (*typing.get_args(literals[0]), None)
    return out


def non_finite(value: Any, path: str) -> tuple[str, float] | None:
    """``(path, value)`` of the first NaN or infinite float in ``value`` (a float, or lists
    and mappings of them; sub-configs check themselves), else None."""
    if isinstance(value, float) and not math.isfinite(value):
        return path, value
    if isinstance(value, (list, tuple)):
        items = enumerate(value)
    elif isinstance(value, dict):
        items = value.items()
    else:
        return None
    for key, item in items:
        found = non_finite(item, f"{path}[{key!r}]" if isinstance(key, str) else f"{path}[{key}]")
        if found is not None:
            return found
    return None


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _to_plain(value: Any) -> Any:
    if isinstance(value, Config):
        return value.to_dict()
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    return value


def _is_config(hint: Any) -> bool:
    return isinstance(hint, type) and issubclass(hint, Config)


def _from_plain(hint: Any, value: Any, path: str) -> Any:
    """Convert a JSON-like ``value`` to the type ``hint``, or raise naming ``path``."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _from_plain(arg, value, path)
            except ConfigError as e:
                errors.append((arg, e))
        if len(errors) == 1:
            raise errors[0][1]
        if isinstance(value, dict) and all(_is_config(arg) for arg, _ in errors):
            # a mapping fits none of several config classes: report the error of the one it is
            # most like (fewest keys that are not its fields), e.g. the typo in an encoder
            raise min(errors, key=lambda item: len(set(value) - {f.name for f in dataclasses.fields(item[0])}))[1]
        raise ConfigError(f"{path}: {value!r} fits none of {hint}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{path}: {value!r} is not allowed; allowed values: {list(args)}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {type(value).__name__} {value!r}")
        inner = args[0] if args else Any
        items = [_from_plain(inner, v, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {type(value).__name__}")
        inner = args[1] if len(args) == 2 else Any
        return {k: _from_plain(inner, v, _join(path, str(k))) for k, v in value.items()}
    if isinstance(hint, type) and issubclass(hint, Config):
        return hint.from_dict(value, path)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {type(value).__name__} {value!r}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {type(value).__name__} {value!r}")
        return value
    if hint in (bool, str):
        if not isinstance(value, hint):
            raise ConfigError(f"{path}: expected {hint.__name__}, got {type(value).__name__} {value!r}")
        return value
    return value


# -- dotted paths (presets' overrides, experiments' --set) ----------------------------
def set_by_path(data: dict[str, Any], path: str, value: Any, *, create: bool = False) -> None:
    """Set ``data[k1]...[kn] = value`` in place for the dotted ``path`` ``"k1. ... .kn"``
    (``value`` stored as plain data, as ``to_dict`` gives it).

    Without ``create``, every key must exist: ``data`` is a whole config's ``to_dict()``,
    so a missing key is a typo, and the error names the fields there are. With ``create``,
    missing (or null) sections become mappings: ``data`` is a partial mapping (a YAML
    file) whose unknown keys ``from_dict`` reports afterwards with the allowed keys."""
    keys = path.split(".")
    if not all(keys):
        raise ConfigError(f"cannot set {path!r}: a dotted path of non-empty keys is expected, e.g. 'encoder.num_blocks'")
    node = data
    for depth, key in enumerate(keys):
        where = ".".join(keys[:depth]) or "the config"
        if not isinstance(node, dict):
            raise ConfigError(f"cannot set {path!r}: {where} is a value ({node!r}), not a section")
        last = depth == len(keys) - 1
        if create and not last and node.get(key) is None:
            node[key] = {}
        elif key not in node and not create:
            raise ConfigError(f"cannot set {path!r}: {where} has no field {key!r}; fields: {sorted(node)}")
        if last:
            node[key] = _to_plain(value)
        else:
            node = node[key]


# -- validation helpers used by the concrete configs ---------------------------------
def check_positive(obj: Config, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if value is not None and value <= 0:
            raise ConfigError(f"{type(obj).__name__}.{name} must be positive, got {value}")


def check_divisible(obj: Config, channels_field: str, heads_field: str) -> None:
    channels, heads = getattr(obj, channels_field), getattr(obj, heads_field)
    if channels is not None and heads and channels % heads:
        options = [h for h in range(1, min(channels, 64) + 1) if channels % h == 0]
        raise ConfigError(
            f"{type(obj).__name__}.{channels_field}={channels} is not divisible by "
            f"{heads_field}={heads}; choose {heads_field} in {options} or change {channels_field}"
        )
