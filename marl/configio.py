"""Config I/O for any (frozen) dataclass: field docstrings, dict/YAML round trips, parsing of
command-line values into a field's type, coercion of YAML values, validation helpers."""
from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import inspect
import json
import math
import os
import re
import textwrap
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from marl.core.errors import MarlError

_TRUE = {"true", "1", "yes", "y", "on", "t"}
_FALSE = {"false", "0", "no", "n", "off", "f"}


# ----------------------------------------------------------------------------- field docs
@functools.lru_cache(maxsize=None)
def field_docs(cls: type) -> dict[str, str]:
    """{field name: docstring written under the field} for a dataclass (base classes included)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue  # defined dynamically (REPL, make_dataclass): no source to read
        node = next((n for n in tree.body if isinstance(n, ast.ClassDef)), None)
        body = node.body if node else []
        for stmt, nxt in zip(body, body[1:]):
            target = stmt.target if isinstance(stmt, ast.AnnAssign) else None
            if isinstance(target, ast.Name) and isinstance(nxt, ast.Expr) \
                    and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str):
                docs[target.id] = inspect.cleandoc(nxt.value.value)
    return docs


@functools.lru_cache(maxsize=None)
def field_types(cls: type) -> dict[str, Any]:
    """{field name: resolved type}; an annotation that cannot be resolved counts as Any."""
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 - unresolvable forward reference: use what we can
        hints = {}
    return {f.name: hints.get(f.name, Any if isinstance(f.type, str) else f.type) for f in dataclasses.fields(cls)}


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


# ----------------------------------------------------------------------------- dict / YAML
def to_plain(value: Any) -> Any:
    """Dataclasses, tuples, paths, numpy/torch scalars -> YAML/JSON-friendly Python values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_plain(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return value.tolist()  # numpy / torch scalars and arrays
    return str(value) if isinstance(value, Path) else value


def to_dict(cfg: Any) -> dict:
    """A dataclass instance as a plain dict (tuples become lists)."""
    assert dataclasses.is_dataclass(cfg) and not isinstance(cfg, type), f"not a dataclass instance: {cfg!r}"
    return to_plain(cfg)


def save_yaml(path: str | os.PathLike, data: Any) -> None:
    """Write YAML atomically (temp file + fsync + os.replace, see marl.checkpoint.atomic_write)."""
    from marl.checkpoint import atomic_write

    text = yaml.safe_dump(to_plain(data), sort_keys=False, default_flow_style=None, allow_unicode=True)
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def load_yaml(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise MarlError(f"config file {path} is missing", "check the path (a run keeps it in <run_dir>/config.yaml)")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise MarlError(f"config file {path} is not valid YAML ({first})", "fix the file or write it again") from None


def from_dict(cls: type, d: typing.Mapping[str, Any] | None) -> Any:
    """Build dataclass `cls` from a mapping; MarlError names an unknown key or a value of the wrong type."""
    d, fields = dict(d or {}), dataclasses.fields(cls)
    for key in set(d) - {f.name for f in fields}:
        close = difflib.get_close_matches(str(key), [f.name for f in fields], n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"valid keys: {', '.join(f.name for f in fields)}"
        raise MarlError(f"unknown key '{key}' for {cls.__name__}", hint)
    for f in fields:
        if f.name not in d and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise MarlError(f"{cls.__name__} needs a value for '{f.name}'", f"set {flag(f.name)}")
    types_ = field_types(cls)
    return check_finite(cls(**{k: coerce(types_[k], v, k) for k, v in d.items()}))


# ----------------------------------------------------------------------------- value parsing
_NONE = type(None)
_EXAMPLES = {bool: "true or false", int: "a whole number, e.g. 100000", float: "a number, e.g. 3e-4",
             dict: 'key=value,key=value or JSON {"key": 1}', list: "comma-separated values, e.g. 0,0,1",
             tuple: "comma-separated values, e.g. 64,64"}


def parse_value(tp: Any, text: str, name: str = "") -> Any:
    """Parse command-line `text` into type `tp`: bool, int, float, str, dict (`k=v,k=v` or JSON),
    list/tuple (`a,b,c` or JSON), Literal, and unions: `str | list` turns "all" into "all" and
    "0,0,1" into [0, 0, 1]; `X | None` accepts "none"/"null"; untyped (Any) guesses. MarlError names the flag."""
    return _checked(tp, str(text), name)


def coerce(tp: Any, value: Any, name: str = "") -> Any:
    """Fit a YAML/Python value into `tp` (strings parsed unless untyped; lists become tuples where needed)."""
    return value if tp in (Any, object) else _checked(tp, value, name)


def _checked(tp: Any, value: Any, name: str) -> Any:
    try:
        return _convert(tp, value)
    except (ValueError, TypeError, SyntaxError):
        base = typing.get_origin(tp) or tp
        fix = f"give {_EXAMPLES[base]}" if base in _EXAMPLES else f"give one of {_type_name(tp)}"
        where = (flag(name) if isinstance(value, str) else f"'{name}'") if name else "value"
        raise MarlError(f"{where} expects {_type_name(tp)}, got {value!r}", fix) from None


def _type_name(tp: Any) -> str:
    if _is_union(tp) or typing.get_origin(tp) is Literal:
        return " | ".join(repr(a) if isinstance(a, str) else _type_name(a) for a in typing.get_args(tp))
    return str(tp).replace("typing.", "") if typing.get_origin(tp) else getattr(tp, "__name__", str(tp))


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType)


def _seq_kind(tp: Any) -> type | None:
    origin = typing.get_origin(tp) or tp
    return origin if origin in (list, tuple) else None


def _auto(text: str) -> Any:
    low = text.strip().lower()
    if low in ("true", "false", "none", "null"):
        return {"true": True, "false": False}.get(low)
    try:
        return int(low) if re.fullmatch(r"[-+]?[\d_]+", low) else float(low)
    except ValueError:
        return text.strip()


def _union_order(members: list, value: Any) -> list:
    """Members to try: a typed value's own type first; for text, sequences first when it looks like one."""
    if not isinstance(value, str):
        return sorted(members, key=lambda m: not isinstance(value, _base(m)))
    seqs = [m for m in members if _seq_kind(m)]
    rest = sorted((m for m in members if m not in seqs), key=lambda m: m not in (bool, int, float))
    text = value.strip()
    looks_seq = text.startswith("[") or "," in text or (bool(re.fullmatch(r"-?\d+", text)) and int not in members)
    return seqs + rest if looks_seq else rest + seqs


def _base(tp: Any) -> type:
    base = typing.get_origin(tp) or tp
    return base if isinstance(base, type) else object


def _convert(tp: Any, v: Any) -> Any:
    args, is_str = typing.get_args(tp), isinstance(v, str)
    if tp in (Any, object, None):  # untyped: "0,0,1" -> [0, 0, 1], "{'N': 3}" -> dict, "3" -> 3
        if not is_str:
            return v
        text = v.strip()
        return _literal(text) if text[:1] in ("[", "{") else [_auto(s) for s in text.split(",")] if "," in text else _auto(v)
    if _is_union(tp):
        if _NONE in args and (v is None or (is_str and v.strip().lower() in ("none", "null"))):
            return None
        for member in _union_order([a for a in args if a is not _NONE], v):
            try:
                return _convert(member, v)
            except (ValueError, TypeError, SyntaxError):
                continue
        raise ValueError(v)
    if typing.get_origin(tp) is Literal:
        for choice in args:
            if choice == v or (is_str and str(choice).lower() == v.strip().lower()):
                return choice
        raise ValueError(v)
    if tp is str and not is_str:
        raise TypeError(v)
    if tp in (bool, int, float) and is_str:
        s = v.strip().lower()
        if tp is bool and s not in _TRUE | _FALSE:
            raise ValueError(v)
        v = s in _TRUE if tp is bool else int(s) if tp is int and re.fullmatch(r"[-+]?[\d_]+", s) else float(s)
    if tp in (bool, int, float):
        if isinstance(v, bool) != (tp is bool) or not isinstance(v, (int, float)) or \
                (tp is int and not float(v).is_integer()):  # 1e5 for an int is fine, 2.5 is not
            raise TypeError(v)
        return tp(v)
    kind, text = _seq_kind(tp), v.strip() if is_str else ""
    if is_str and _base(tp) is dict:
        v = _literal(text) if text.startswith("{") else dict(_kv(item) for item in text.split(",") if item.strip())
    elif is_str and kind:
        v = _literal(text) if text.startswith("[") else [s.strip() for s in text.strip("()").split(",") if s.strip()]
    elif is_str and _base(tp) not in (str, dict, object):
        return tp(v)  # pathlib.Path, enums, ...
    if not isinstance(v, (list, tuple) if kind else _base(tp)):
        raise TypeError(v)
    if kind:
        elem = args[0] if args and (kind is list or (len(args) == 2 and args[1] is Ellipsis)) else None
        elem = Any if elem is None and is_str and not text.startswith("[") else elem
        v = kind(_convert(elem, x) if elem is not None else x for x in v)
    return dict(v) if isinstance(v, dict) else v


def _literal(text: str) -> Any:
    """JSON, or a Python literal such as {'N': 3} (as the field docs write them)."""
    try:
        return json.loads(text)
    except ValueError:
        return ast.literal_eval(text)  # raises ValueError / SyntaxError


def _kv(item: str) -> tuple[str, Any]:
    key, sep, val = item.partition("=")
    if not sep or not key.strip():
        raise ValueError(item)
    return key.strip(), _auto(val)


# ----------------------------------------------------------------------------- validation helpers
def check_finite(cfg: Any) -> Any:
    """`cfg` (a config dataclass) when every float in it, in lists and tuples too, is finite;
    else MarlError naming the field: a NaN or infinite learning rate, coefficient or bound is
    never meant, and training would fail far from the cause."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        items = value if isinstance(value, (list, tuple)) else (value,)
        if any(isinstance(v, float) and not math.isfinite(v) for v in items):
            raise MarlError(f"{flag(f.name)} must be a finite number, got {to_plain(value)!r}",
                            f"pass {flag(f.name)} with a finite value")
    return cfg


def _bad(name: str, value: Any, need: str) -> MarlError:
    return MarlError(f"{flag(name)} must be {need}, got {value!r}", f"pass {flag(name)} with a value {need}")


def positive(name: str, value: float) -> None:
    if not value > 0:
        raise _bad(name, value, "> 0")


def in_range(name: str, value: float, lo: float, hi: float) -> None:
    """lo <= value <= hi (e.g. gamma, lambda, clip fractions)."""
    if not lo <= value <= hi:
        raise _bad(name, value, f"in [{lo}, {hi}]")


def check_choices(cfg: Any) -> None:
    """MarlError naming the first field of a dataclass instance whose value is not one of its
    `Literal[...]` choices: the check that parsing applies, for configs built in Python."""
    for name, tp in field_types(type(cfg)).items():
        value = getattr(cfg, name)
        if typing.get_origin(tp) is Literal and value not in typing.get_args(tp):
            raise MarlError(f"{flag(name)} expects {_type_name(tp)}, got {value!r}", f"give one of {_type_name(tp)}")
