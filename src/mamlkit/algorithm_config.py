"""The ``[algorithm]`` table: constructor arguments of the chosen algorithm, from a config file
(``[algorithm]`` in TOML, ``"algorithm": {...}`` in JSON) or the command line
(``--algorithm.regularization 2.0``).

The valid keys and their types are read from the algorithm class itself (the signature and type
hints of its ``__init__``, following ``**kwargs`` up to the base class), so a new algorithm's
arguments are settable without any change here. Values are checked before any work starts; the
algorithm's own checks (ranges, combinations) then run when the learner is built.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

TOP_LEVEL = ("inner_lr", "inner_steps", "first_order", "eval_inner_steps", "batching",
             "chunk_size", "compile", "task_threads")
"""Constructor arguments that are top-level settings (one place to set each): refused in the
``[algorithm]`` table with the option to use instead."""
SET_BY_EXPERIMENT = ("model", "loss")
"""Constructor arguments the experiment supplies (its network and its loss)."""


def _parameters(cls: type) -> dict[str, inspect.Parameter]:
    """Keyword parameters of ``cls.__init__``, following ``**kwargs`` to the bases' ``__init__``."""
    found: dict[str, inspect.Parameter] = {}
    for klass in cls.__mro__:
        if "__init__" not in vars(klass) or klass is object:
            continue
        params = inspect.signature(klass.__init__).parameters.values()
        for param in params:
            if param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY) \
                    and param.name != "self":
                found.setdefault(param.name, param)
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return found


def _hints(cls: type) -> dict[str, Any]:
    """Resolved type hints of every ``__init__`` along ``cls``'s bases (unresolvable: skipped)."""
    hints: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        if "__init__" in vars(klass) and klass is not object:
            try:
                hints.update(typing.get_type_hints(klass.__init__))
            except (NameError, TypeError):
                pass  # an annotation naming something unimportable: the value goes unchecked
    return hints


def _members(hint: Any) -> tuple[Any, ...]:
    """The alternatives of a union hint (``int | None`` -> ``(int, NoneType)``), else ``(hint,)``."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return typing.get_args(hint)
    return (hint,)


SEQUENCES = (tuple, list, Sequence, Iterable)
"""Hints a TOML array (a comma-separated list on the command line) gives a value of."""


def _plain(hint: Any) -> bool:
    """Whether a value of ``hint`` other than ``None`` can be written in a config file (not a
    function or a module)."""
    origin = typing.get_origin(hint) or hint
    return origin in (bool, int, float, str, dict, *SEQUENCES) or hint is Any \
        or (inspect.isclass(origin) and issubclass(origin, Mapping))


def settable(cls: type) -> dict[str, Any]:
    """Key -> type hint of every constructor argument of ``cls`` the ``[algorithm]`` table sets:
    all of them except :data:`TOP_LEVEL`, :data:`SET_BY_EXPERIMENT` and those that only take
    functions or modules (``forward``, a loss function)."""
    hints = _hints(cls)
    keys = {}
    for name, param in _parameters(cls).items():
        if name in TOP_LEVEL or name in SET_BY_EXPERIMENT:
            continue
        hint = hints.get(name, Any if param.annotation is param.empty else param.annotation)
        if isinstance(hint, str) or any(_plain(h) for h in _members(hint)):
            keys[name] = hint
    return keys


def _describe(hint: Any) -> str:
    """``int``, ``str or None``, ``tuple[float, float]``: the values ``hint`` admits in a file."""
    plain = [h for h in _members(hint) if _plain(h) or h is type(None)]
    return " or ".join("None" if h is type(None) else str(h) if typing.get_origin(h)
                       else getattr(h, "__name__", str(h)) for h in plain)


def _coerce_one(hint: Any, value: Any) -> tuple[bool, Any]:
    """``(True, converted)`` when ``value`` fits ``hint`` (ints fit floats, lists fit tuples)."""
    origin = typing.get_origin(hint)
    if hint is Any or isinstance(hint, str):
        return True, value
    if hint is type(None):
        return value is None, None
    if hint is bool:
        return isinstance(value, bool), value
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return ok, float(value) if ok else value
    if hint is str:
        return isinstance(value, str), value
    if origin in SEQUENCES or hint in SEQUENCES:
        if not isinstance(value, (list, tuple)):
            return False, value
        args = typing.get_args(hint)
        items = args if origin is tuple and args and args[-1] is not Ellipsis else None
        if items is not None and len(items) != len(value):
            return False, value
        item_hints = items or [args[0] if args else Any] * len(value)
        converted = [_coerce_one(h, v) for h, v in zip(item_hints, value)]
        if not all(ok for ok, _ in converted):
            return False, value
        out = [v for _, v in converted]
        return True, tuple(out) if (origin or hint) is tuple else out
    if inspect.isclass(origin or hint) and issubclass(origin or hint, Mapping):
        return isinstance(value, Mapping), dict(value) if isinstance(value, Mapping) else value
    return False, value


def coerce_value(algo: str, key: str, hint: Any, value: Any) -> Any:
    """``value`` converted to ``hint``; ``ValueError`` naming the key and the expected type."""
    for member in _members(hint):
        ok, converted = _coerce_one(member, value)
        if ok:
            return converted
    raise ValueError(f"algorithm.{key} of {algo} must be {_describe(hint)}, got "
                     f"{type(value).__name__} {value!r}.")


def parse_text(hint: Any, text: str) -> Any:
    """The value a command-line string means for ``hint``: ``none``, ``true``/``false``, numbers,
    comma-separated tuples and lists; otherwise the string itself."""
    for member in _members(hint):
        origin = typing.get_origin(member) or member
        if member is type(None) and text.lower() == "none":
            return None
        if member is bool and text.lower() in ("true", "false", "1", "0", "yes", "no"):
            return text.lower() in ("true", "1", "yes")
        if member in (int, float):
            try:
                return member(text)
            except ValueError:
                continue
        if origin in SEQUENCES and ("," in text or str not in _members(hint)):
            args = typing.get_args(member)
            item = args[0] if args else str
            try:
                return [parse_text(item, part.strip()) for part in text.split(",")]
            except ValueError:
                continue
    return text


def check_table(algo: str, cls: type, table: Mapping[str, Any], source: str) -> dict[str, Any]:
    """The ``[algorithm]`` table of ``cls`` with its values converted to their types.

    Raises ``ValueError`` naming the key for a top-level setting, an experiment's own argument, an
    unknown key (listing the valid ones) or a value of the wrong type.
    """
    from mamlkit.config import FIELDS

    keys = settable(cls)
    checked = {}
    for key, value in table.items():
        if key in TOP_LEVEL or key in FIELDS:
            raise ValueError(f"algorithm.{key} in {source}: {key} is a top-level setting; set it "
                             f"once, with --{key.replace('_', '-')} (or {key} = ... outside the "
                             "[algorithm] table).")
        if key in SET_BY_EXPERIMENT:
            raise ValueError(f"algorithm.{key} in {source}: the {key} is chosen by the experiment "
                             "(its network and its loss); drop it.")
        if key not in keys:
            valid = ", ".join(sorted(keys)) or "none"
            raise ValueError(f"Unknown key algorithm.{key} in {source}: {algo} takes {valid} "
                             "(and the top-level settings "
                             f"{', '.join(sorted(TOP_LEVEL))}).")
        checked[key] = coerce_value(algo, key, keys[key], value)
    return checked


def split_options(argv: list[str]) -> tuple[list[str], dict[str, str]]:
    """``argv`` without its ``--algorithm.NAME VALUE`` (or ``--algorithm.NAME=VALUE``) options,
    and those options as ``{NAME: VALUE}`` strings (converted later, once the algorithm is known).
    """
    rest: list[str] = []
    options: dict[str, str] = {}
    index = 0
    while index < len(argv):
        arg = argv[index]
        if not arg.startswith("--algorithm."):
            rest.append(arg)
            index += 1
            continue
        name, equals, value = arg[len("--algorithm."):].partition("=")
        if not equals:
            if index + 1 >= len(argv) or argv[index + 1].startswith("--"):
                raise ValueError(f"{arg} needs a value, e.g. {arg} 2.0.")
            value = argv[index + 1]
            index += 1
        if not name:
            raise ValueError(f"{arg}: name the argument, e.g. --algorithm.cg_steps 5.")
        if name in options:
            raise ValueError(f"--algorithm.{name} is given twice ({options[name]!r} and "
                             f"{value!r}); pass it once.")
        options[name.replace("-", "_")] = value
        index += 1
    return rest, options


def from_text(algo: str, cls: type, options: Mapping[str, str]) -> dict[str, Any]:
    """Command-line ``--algorithm.NAME VALUE`` strings converted by the types of ``cls``'s
    arguments (unknown names are left for :func:`check_table` to refuse)."""
    keys = settable(cls)
    return {k: parse_text(keys[k], v) if k in keys else v for k, v in options.items()}


def algorithm_table(algo: str, table: dict[str, Any], source: str = "the configuration"
                    ) -> dict[str, Any]:
    """``table`` checked against the constructor of the algorithm called ``algo`` (values
    converted to its types); ``ValueError`` for an unknown algorithm, key or type."""
    from mamlkit.algorithms import ALGORITHMS

    if algo not in ALGORITHMS:
        raise ValueError(f"Unknown algorithm {algo!r}. Known algorithms: "
                         f"{', '.join(sorted(ALGORITHMS))}.")
    return check_table(algo, ALGORITHMS[algo], table, source)
