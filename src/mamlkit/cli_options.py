"""The options of ``mamlkit train`` and ``mamlkit eval`` generated from the configuration: one per
field of :class:`mamlkit.config.TrainConfig`, in one ``--help`` group per concern, with the
fields' docstrings as help."""

from __future__ import annotations

import argparse
import ast
import inspect
import textwrap
import typing
from typing import Any

from mamlkit.config import CONCERN_OF, FIELDS, TrainConfig, field_type
from mamlkit.config_groups import CONCERNS

EVAL_OPTIONS: dict[str, tuple[str, ...]] = {
    "task": ("--task",), "data_root": ("--data-root",), "class_split": ("--class-split",),
    "ways": ("--ways",), "shots": ("--shots",), "eval_queries": ("--queries", "--eval-queries"),
    "test_tasks": ("--test-episodes", "--test-tasks"), "eval_inner_steps": ("--eval-inner-steps",),
    "eval_shots": ("--eval-shots",), "baseline": ("--baseline",), "invert": ("--invert",),
    "on_bad_image": ("--on-bad-image",), "cache_dir": ("--cache-dir",), "device": ("--device",),
    "threads": ("--threads",), "batching": ("--batching",), "plots": ("--plots",),
}
"""Settings ``mamlkit eval`` takes (field -> flags); the rest were fixed by training."""
EVAL_HELP = {
    "task": "evaluate on another task family whose inputs fit the network (e.g. images)",
    "data_root": "the evaluation data (with --task images: another image folder tree)",
    "ways": "classes per episode; other than the trained number re-initialises the output "
            "layer to zeros (noted in the output)",
    "eval_queries": "query examples per class of the test episodes (0 = as many as shots)",
    "test_tasks": "number of fixed meta-test episodes",
    "baseline": "pretrained (also score the run's pretrained classifier) or none",
}
"""Help of the evaluation options that differ from the training meaning."""


ALGORITHM_HELP = (
    "--algorithm.NAME VALUE sets any constructor argument of the chosen algorithm (the "
    "[algorithm] table of a config file), e.g. --algo imaml --algorithm.regularization 2.0 "
    "--algorithm.cg_steps 5; --algo mamlpp --algorithm.msl_iterations 100; --algo reptile "
    "--algorithm.inner_data support; --algo anil --algorithm.head classifier. Values are checked "
    "against the algorithm's signature; arguments that are top-level options (inner_lr, "
    "inner_steps, first_order, ...) are set with those options only.")
"""The ``mamlkit train --help`` section on ``--algorithm.NAME`` options."""


VALUED_SWITCHES = {"compile": ("on", "off", "{auto,on,off}")}
"""Settings given as a switch or with a value: ``--compile`` alone is ``on``, ``--no-compile``
``off``, ``--compile auto`` the value."""


def add_config_options(parser: argparse.ArgumentParser, skip: tuple[str, ...] = (),
                        only: dict[str, tuple[str, ...]] | None = None) -> None:
    """One option per setting: for ``train`` every field, in one group per concern
    (:data:`~mamlkit.config_groups.CONCERNS`); for ``eval`` those of ``only``."""
    if only:
        groups = {None: parser.add_argument_group("evaluation settings (the rest are the run's)")}
    else:
        groups = {concern: parser.add_argument_group(
            f"{concern} settings (override the experiment's defaults)", f"{group.doc}.")
            for concern, group in CONCERNS.items()}
    docs = {**_field_docs(), **(EVAL_HELP if only else {})}
    for name in (only or FIELDS):
        if name in skip or typing.get_origin(field_type(name)) is dict:
            continue  # tables: --algorithm.NAME VALUE (see ALGORITHM_HELP)
        group = groups[None if only else CONCERN_OF[name]]
        flags = only[name] if only else ("--" + name.replace("_", "-"),)
        kind = field_type(name)
        kwargs: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS,
                                  "help": docs.get(name, "")}
        if name in VALUED_SWITCHES:
            on, off, modes = VALUED_SWITCHES[name]
            kwargs.update(nargs="?", const=on, metavar=modes)
            group.add_argument(*flags, **kwargs)
            group.add_argument(f"--no-{name.replace('_', '-')}", dest=name, default=argparse.SUPPRESS,
                               action="store_const", const=off, help=f"the same as {flags[0]} {off}")
            continue
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(kind) is list:
            kwargs.update(nargs="+", type=int, metavar="N")
        else:
            kwargs.update(type=kind, metavar=kind.__name__.upper())
        group.add_argument(*flags, **kwargs)


def _field_docs() -> dict[str, str]:
    """Attribute docstrings of TrainConfig, for --help."""
    source = inspect.getsource(TrainConfig)
    body = ast.parse(source).body[0].body
    docs: dict[str, str] = {}
    for node, following in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(following, ast.Expr) \
                and isinstance(following.value, ast.Constant):
            docs[node.target.id] = str(following.value.value).strip()
    return docs


def add_algorithm_help(parser: argparse.ArgumentParser) -> None:
    """The ``--help`` section on ``--algorithm.NAME VALUE`` (parsed before argparse sees them)."""
    parser.add_argument_group("algorithm arguments", textwrap.fill(ALGORITHM_HELP, width=100))
