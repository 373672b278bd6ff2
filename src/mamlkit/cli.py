"""The ``mamlkit`` command: ``train``, ``eval`` and ``list``.

Every field of :class:`mamlkit.config.TrainConfig` is an option (``--meta-batch-size 16``);
values are layered: built-in defaults < the experiment's literature defaults < ``--config FILE``
< options given on the command line.
"""

from __future__ import annotations

import argparse
import inspect
import re
import sys
import textwrap
import time
import typing
from pathlib import Path
from typing import Any

import torch

from mamlkit.config import FIELDS, TrainConfig, field_type, make_config, read_config_file
from mamlkit.distributed import (
    check_divisible,
    environment_world_size,
    init_from_environment,
    run_on_main,
    shutdown,
)
from mamlkit.experiments import experiment_names, get_experiment
from mamlkit.experiments.common import check_device, load_run_config, prepare_run_dir
from mamlkit.tracking import log_final_evaluation
from mamlkit.train import NonFiniteError, autocast_factory


def _add_config_options(parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    group = parser.add_argument_group("configuration (override the experiment's defaults)")
    docs = _field_docs()
    for name in FIELDS:
        if name in skip:
            continue
        flag = "--" + name.replace("_", "-")
        kind = field_type(name)
        kwargs: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS,
                                  "help": docs.get(name, "")}
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(kind) is list:
            kwargs.update(nargs="+", type=int, metavar="N")
        else:
            kwargs.update(type=kind, metavar=kind.__name__.upper())
        group.add_argument(flag, **kwargs)


def _field_docs() -> dict[str, str]:
    """Attribute docstrings of TrainConfig, for --help."""
    import ast
    import inspect

    source = inspect.getsource(TrainConfig)
    body = ast.parse(source).body[0].body
    docs: dict[str, str] = {}
    for node, following in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(following, ast.Expr) \
                and isinstance(following.value, ast.Constant):
            docs[node.target.id] = str(following.value.value).strip()
    return docs


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``mamlkit`` command."""
    parser = argparse.ArgumentParser(
        prog="mamlkit", description="Model-agnostic meta-learning (MAML and its family).")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="meta-train on a task family, then evaluate",
                           description="Meta-train, evaluate with the paper's protocol, and save "
                                       "checkpoints, metrics and plots into the run directory.")
    train.add_argument("task", help=f"task family: {', '.join(experiment_names())}")
    train.add_argument("--config", type=Path, help="TOML or JSON file with config values")
    train.add_argument("--run-dir", type=Path, help="output folder (default runs/TASK-ALGO-TIME)")
    train.add_argument("--resume", action="store_true",
                       help="continue the run in --run-dir from its last checkpoint")
    train.add_argument("--overwrite", action="store_true",
                       help="replace a non-empty --run-dir instead of refusing")
    train.add_argument("--no-eval", action="store_true", help="skip the final evaluation")
    _add_config_options(train, skip=("task",))

    evaluate = sub.add_parser("eval", help="evaluate a trained run with the paper's protocol")
    evaluate.add_argument("run_dir", type=Path, help="folder of a training run")
    _add_config_options(evaluate, skip=("task",))

    sub.add_parser("list", help="list task families and algorithms")
    _add_export_parser(sub)
    return parser


def _add_export_parser(sub: Any) -> None:
    from mamlkit.export import FORMATS

    export = sub.add_parser(
        "export", help="write a run's meta-learned initialisation as safetensors or a Hugging "
                       "Face folder",
        description="Export the model's meta-learned initialisation (its own parameter names, "
                    "no optimizer or algorithm state) from a run's best checkpoint.")
    export.add_argument("run_dir", type=Path, help="folder of a training run")
    export.add_argument("--format", choices=FORMATS, default="safetensors", dest="fmt",
                        help="safetensors: one model.safetensors file; hf: save_pretrained "
                             "folder of a transformers model (needs --hf-config)")
    export.add_argument("--out", type=Path,
                        help="output file (safetensors) or folder (hf); default RUN/export/")
    export.add_argument("--checkpoint", type=Path,
                        help="checkpoint to export (default: the run's checkpoints/best.pt)")
    export.add_argument("--hf-config", type=Path,
                        help="folder with the transformers model's config.json (--format hf)")


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {name: getattr(args, name) for name in FIELDS if hasattr(args, name)}


def cmd_train(args: argparse.Namespace) -> int:
    """``mamlkit train``: validate everything first, then train and evaluate."""
    experiment = get_experiment(args.task)
    run_dir = args.run_dir
    if args.resume:
        if run_dir is None:
            raise ValueError("--resume needs --run-dir pointing at the run to continue.")
        saved = load_run_config(run_dir)
        if saved.get("task") != args.task:
            raise ValueError(f"{run_dir} holds a {saved.get('task')!r} run, not {args.task!r}.")
        config = make_config(saved, _overrides(args))
    else:
        file_values = read_config_file(args.config) if args.config else {}
        config = make_config(experiment.defaults_for({**file_values, **_overrides(args)}),
                             file_values, _overrides(args), {"task": args.task})
        if run_dir is None:
            run_dir = Path("runs") / f"{args.task}-{config.algo}-{time.strftime('%Y%m%d-%H%M%S')}"
    _check_algorithm(config.algo)
    check_device(config.device)
    autocast_factory(config.amp, torch.device(config.device))
    check_divisible(config.meta_batch_size, environment_world_size())
    context = init_from_environment(config.device)  # torchrun: one process per device
    try:
        run_dir = run_on_main(lambda: run_dir, context)  # rank 0's (time-stamped) folder
        run_on_main(lambda: prepare_run_dir(run_dir, resume=args.resume, overwrite=args.overwrite),
                    context)
        say = print if context.is_main else (lambda *_: None)
        say(f"run directory: {run_dir}" + (f" ({context.world_size} processes, {context.backend})"
                                           if context.enabled else ""))
        start = time.perf_counter()
        summary = experiment.train(config, run_dir, args.resume)
        train_s = time.perf_counter() - start
        say(f"meta-training finished in {train_s:.1f} s: {summary}")
        if context.is_main and not args.no_eval and not any(v.get("stopped") for v in _runs(summary)):
            results = experiment.evaluate(config, run_dir)
            log_final_evaluation(config, run_dir, results)
        say(f"checkpoints: {run_dir / '**' / 'checkpoints'}\nmetrics: {run_dir}/**/metrics.csv\n"
            f"evaluation: {run_dir / 'eval'}\nplots: {run_dir / 'plots'}")
    finally:
        shutdown()
    return 0


def _runs(summary: dict[str, Any]) -> list[dict[str, Any]]:
    return [v for v in summary.values() if isinstance(v, dict)]


def _check_algorithm(name: str) -> None:
    from mamlkit.algorithms import ALGORITHMS

    if name not in ALGORITHMS:
        raise ValueError(f"Unknown algorithm {name!r}. Known algorithms: "
                         f"{', '.join(sorted(ALGORITHMS))}.")


def cmd_eval(args: argparse.Namespace) -> int:
    """``mamlkit eval RUN_DIR``."""
    saved = load_run_config(args.run_dir)
    config = make_config(saved, _overrides(args))
    get_experiment(config.task).evaluate(config, args.run_dir)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    """``mamlkit list``."""
    from mamlkit.algorithms import ALGORITHMS

    print("tasks:")
    for name in experiment_names():
        print(_listing(name, get_experiment(name).summary))
    print("algorithms:")
    for name, cls in sorted(ALGORITHMS.items()):
        print(_listing(name, cls.__doc__ or ""))
    return 0


def _listing(name: str, doc: str) -> str:
    """One entry of ``mamlkit list``: the name and the description's first sentence, wrapped."""
    return textwrap.fill(first_sentence(doc), width=100, initial_indent=f"  {name:<18} ",
                         subsequent_indent=" " * 21)


def first_sentence(doc: str) -> str:
    """The first sentence of a docstring's first paragraph, as plain text (reST roles and
    ``literals`` unwrapped), for one-line listings."""
    paragraph = " ".join(inspect.cleandoc(doc).split("\n\n")[0].split())
    plain = re.sub(r":[a-z]+:`~?([^`]+)`", r"\1", paragraph)
    plain = re.sub(r"``([^`]+)``|`([^`]+)`", lambda m: m.group(1) or m.group(2), plain)
    end = re.search(r"(?<!\bet al)(?<!\be\.g)(?<!\bi\.e)\.(\s|$)", plain)
    return plain[:end.start() + 1] if end else plain


def cmd_export(args: argparse.Namespace) -> int:
    """``mamlkit export RUN_DIR --format safetensors|hf``."""
    from mamlkit.export import export_run

    written = export_run(args.run_dir, args.fmt, out=args.out, checkpoint=args.checkpoint,
                         hf_config=args.hf_config)
    print(f"exported the meta-learned initialisation to {written}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``mamlkit`` command; bad input exits with status 2 and one message."""
    args = build_parser().parse_args(argv)
    commands = {"train": cmd_train, "eval": cmd_eval, "list": cmd_list, "export": cmd_export}
    try:
        return commands[args.command](args)
    except (ValueError, FileNotFoundError, FileExistsError, ImportError) as error:
        print(f"mamlkit: error: {error}", file=sys.stderr)
        return 2
    except NonFiniteError as error:
        print(f"mamlkit: stopped: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
