"""The ``mamlkit`` command: ``train``, ``eval`` and ``list``.

Every field of :class:`mamlkit.config.TrainConfig` is an option (``--meta-batch-size 16``);
values are layered: built-in defaults < the experiment's literature defaults < ``--config FILE``
< options given on the command line.
"""

from __future__ import annotations

import argparse
import inspect
import re
import signal
import sys
import textwrap
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

import torch

from mamlkit.cli_options import EVAL_OPTIONS, add_algorithm_help, add_config_options
from mamlkit.config import (
    FIELDS,
    TrainConfig,
    check_resume_changes,
    make_config,
    read_config_file,
)
from mamlkit.distributed import (
    check_divisible,
    environment_world_size,
    init_from_environment,
    run_on_main,
    shutdown,
)
from mamlkit.experiments import experiment_names, get_experiment
from mamlkit.experiments.common import (
    check_device,
    check_resumable,
    check_writable_run,
    load_run_config,
    prepare_run_dir,
)
from mamlkit.experiments.protocol import baselines_help
from mamlkit.faults import (
    EXIT_BAD_INPUT,
    EXIT_BUG,
    EXIT_DONE,
    EXIT_NON_FINITE,
    EXIT_SIGNAL_BASE,
    cli_spelling,
    describe,
)
from mamlkit.tracking import log_final_evaluation
from mamlkit.train import NonFiniteError, autocast_factory, stop_code


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``mamlkit`` command."""
    parser = argparse.ArgumentParser(
        prog="mamlkit", description="Model-agnostic meta-learning (MAML and its family).",
        allow_abbrev=False)
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="meta-train on a task family, then evaluate",
                           allow_abbrev=False, epilog=baselines_help(),
                           formatter_class=argparse.RawDescriptionHelpFormatter,
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
    add_config_options(train, skip=("task",))
    add_algorithm_help(train)

    evaluate = sub.add_parser(
        "eval", help="evaluate a trained run with the paper's protocol", allow_abbrev=False,
        description="Evaluate a trained run on its meta-test split, on another dataset "
                    "(--task, --data-root), or on Lake et al.'s 20 one-shot runs (--benchmark).")
    evaluate.add_argument("run_dir", type=Path, help="folder of a training run")
    evaluate.add_argument("--benchmark", choices=("omniglot-20runs",),
                          help="Lake et al.'s (Science 2015) 20 runs of 20-way within-alphabet "
                               "one-shot classification (all_runs.zip under --data-root/omniglot)")
    evaluate.add_argument("--support-noise", metavar="RATES",
                          help="also corrupt this fraction of every support set's labels, e.g. "
                               "0.2,0.4 (seeded, queries clean, the same episodes for every "
                               "method; writes eval/support-noise.*; image runs)")
    evaluate.add_argument("--noise-kind", choices=("symmetric", "pair"), default="symmetric",
                          help="symmetric: flip to another class; pair: to one fixed other class")
    add_config_options(evaluate, only=EVAL_OPTIONS)

    sub.add_parser("list", help="list task families and algorithms", allow_abbrev=False)
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


def _with_algorithm_options(args: argparse.Namespace, *layers: dict[str, Any]) -> TrainConfig:
    """The config of ``layers`` with the command line's ``--algorithm.NAME VALUE`` options on top,
    their strings read by the types of the chosen algorithm's arguments."""
    config = make_config(*layers)
    options = getattr(args, "algorithm_options", {})
    if not options:
        return config
    from mamlkit.algorithm_config import from_text
    from mamlkit.algorithms import ALGORITHMS

    _check_algorithm(config.algo)
    table = from_text(config.algo, ALGORITHMS[config.algo], options)
    return make_config(*layers, {"algorithm": table})


def cmd_train(args: argparse.Namespace) -> int:
    """``mamlkit train``: validate everything first, then train and evaluate.

    A resumed run is checked whole before anything is written: its settings may only change in
    :data:`~mamlkit.config.RESUMABLE_KEYS`, and every stage must have a readable checkpoint.
    """
    experiment = get_experiment(args.task)
    run_dir = args.run_dir
    if args.resume and args.overwrite:
        raise ValueError("--resume and --overwrite contradict each other: --resume continues a "
                         "run, --overwrite deletes it first. Pass one of them.")
    file_values = read_config_file(args.config) if args.config else {}
    if args.resume:
        if run_dir is None:
            raise ValueError("--resume needs --run-dir pointing at the run to continue.")
        saved = load_run_config(run_dir)
        if saved.get("task") != args.task:
            raise ValueError(f"{run_dir} holds a {saved.get('task')!r} run, not {args.task!r}.")
        config = _with_algorithm_options(args, saved, file_values, _overrides(args))
        check_resume_changes(make_config(saved), config, str(run_dir))
        checkpoint_every = make_config(saved).checkpoint_every  # how the files were written
    else:
        config = _with_algorithm_options(
            args, experiment.defaults_for({**file_values, **_overrides(args)}), file_values,
            _overrides(args), {"task": args.task})
        if run_dir is None:
            run_dir = Path("runs") / f"{args.task}-{config.algo}-{time.strftime('%Y%m%d-%H%M%S')}"
    _check_algorithm(config.algo)
    if config.algorithm and not experiment.algorithm_arguments:
        raise ValueError(f"{args.task} builds its learner itself and takes no [algorithm] "
                         f"arguments; drop {', '.join(sorted(config.algorithm))} (the "
                         "--algorithm.NAME options or the config file's [algorithm] table).")
    check_device(config.device)
    if experiment.check is not None:
        experiment.check(config)  # settings and data, before a run folder exists
    autocast_factory(config.amp, torch.device(config.device))
    check_divisible(config.meta_batch_size, environment_world_size())
    context = init_from_environment(config.device)  # torchrun: one process per device
    try:
        run_dir = run_on_main(lambda: run_dir, context)  # rank 0's (time-stamped) folder
        if args.resume:
            run_on_main(lambda: check_resumable(run_dir, checkpoint_every), context)
        run_on_main(lambda: prepare_run_dir(run_dir, resume=args.resume, overwrite=args.overwrite),
                    context)
        args.resume_hint = (f"mamlkit train {args.task} --run-dir {run_dir} --resume"
                            + (" --no-eval" if args.no_eval else ""))  # as the run was started
        say = print if context.is_main else (lambda *_: None)
        say(f"run directory: {run_dir}" + (f" ({context.world_size} processes, {context.backend})"
                                           if context.enabled else ""))
        start = time.perf_counter()
        summary = experiment.train(config, run_dir, args.resume)
        runs = _runs(summary)
        stopped = next((run["stopped"] for run in runs.values() if run.get("stopped")), "")
        code = stop_code(stopped)
        if code:
            if context.is_main:
                if code > EXIT_SIGNAL_BASE:
                    cause = f"by {signal.Signals(code - EXIT_SIGNAL_BASE).name}"
                    advice = f"The checkpoints are kept; continue with: {args.resume_hint}"
                else:
                    cause = f"({stopped})"
                    advice = "Start a new run with a lower --meta-lr or --inner-lr."
                print(f"mamlkit: stopped {cause}: {_describe_runs(runs)}. {advice}",
                      file=sys.stderr)
            return code
        verb = f"stopped ({stopped})" if stopped else "finished"
        say(f"meta-training {verb} in {time.perf_counter() - start:.1f} s: {_describe_runs(runs)}")
        if context.is_main and not args.no_eval and not stopped:
            results = experiment.evaluate(config, run_dir)
            log_final_evaluation(config, run_dir, results)
        if context.is_main:
            _print_outputs(run_dir)
    finally:
        shutdown()
    return EXIT_DONE


def _runs(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The per-stage entries of an experiment's training summary."""
    return {name: v for name, v in summary.items() if isinstance(v, dict) and "iterations" in v}


def _describe_runs(runs: dict[str, dict[str, Any]]) -> str:
    """``maml 100 iterations (1.2 s), best val loss 0.31; pretrained ...`` from a summary."""
    parts = []
    for name, run in runs.items():
        text = f"{name} {run['iterations']} iterations"
        if isinstance(run.get("train_seconds"), (int, float)):
            text += f" ({run['train_seconds']:.1f} s)"
        for key, value in run.items():
            if key.startswith("best_") and isinstance(value, (int, float)):
                text += f", {key.replace('_', ' ')} {value:.4g}"
        parts.append(text)
    return "; ".join(parts) or "nothing to train"


def _print_outputs(run_dir: Path) -> None:
    """The files the run left, only those that exist."""
    found = {"checkpoints": sorted(p for p in run_dir.glob("**/checkpoints") if p.is_dir()),
             "metrics": sorted(run_dir.glob("**/metrics.csv")),
             "evaluation": [run_dir / "eval"] if (run_dir / "eval").is_dir() else [],
             "plots": [run_dir / "plots"] if (run_dir / "plots").is_dir() else []}
    for label, paths in found.items():
        if paths:
            print(f"{label}: {', '.join(str(p) for p in paths)}")


def _check_algorithm(name: str) -> None:
    from mamlkit.algorithms import ALGORITHMS

    if name not in ALGORITHMS:
        raise ValueError(f"Unknown algorithm {name!r}. Known algorithms: "
                         f"{', '.join(sorted(ALGORITHMS))}.")


def cmd_eval(args: argparse.Namespace) -> int:
    """``mamlkit eval RUN_DIR``: the run's own protocol, another dataset, or a benchmark."""
    from mamlkit.experiments.vision_data import is_image_task

    saved = load_run_config(args.run_dir)
    overrides = _overrides(args)
    if not is_image_task(saved.get("task", "")):
        image_only = sorted({"task", "data_root", "class_split", "ways", "invert",
                             "on_bad_image"} & set(overrides)) + (["benchmark"] if args.benchmark
                                                                  else []) \
            + (["support_noise"] if args.support_noise else [])
        if image_only:
            flags = ", ".join("--" + k.replace("_", "-") for k in image_only)
            raise ValueError(f"{flags}: evaluating on other data or ways is supported for image "
                             f"runs; {args.run_dir} is a {saved.get('task')!r} run. Drop {flags}.")
        config = make_config(saved, overrides)
        earlier = (args.run_dir / "eval" / "results.json").is_file()
        get_experiment(config.task).evaluate(config, args.run_dir)
        if earlier:
            print(f"results: {args.run_dir / 'eval' / 'results.json'} (replaces the earlier "
                  "evaluation's file)")
        return 0
    if args.benchmark:  # --data-root then says where the benchmark's files are
        from mamlkit.experiments.omniglot_runs import evaluate_lake_runs

        config = make_config(saved, overrides)
        check_device(config.device)
        evaluate_lake_runs(config, args.run_dir)
        return 0
    from mamlkit.experiments.vision_eval import evaluation_config

    config = evaluation_config(saved, overrides)
    check_device(config.device)
    if args.support_noise:
        from mamlkit.experiments.noise_eval import evaluate_support_noise
        from mamlkit.noise import parse_rates

        evaluate_support_noise(config, args.run_dir, parse_rates(args.support_noise),
                               args.noise_kind)
        return 0
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
    """Entry point of the ``mamlkit`` command; returns its exit code (:mod:`mamlkit.faults`).

    Expected failures (bad input, missing or damaged files, a full disk, no permission, a failed
    download) print one line naming the file, the problem and the fix; a traceback is printed
    only for a bug.
    """
    from mamlkit.algorithm_config import split_options

    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        argv, algorithm_options = split_options(argv)
    except ValueError as error:
        print(f"mamlkit: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    args = build_parser().parse_args(argv)
    if algorithm_options and args.command != "train":
        print(f"mamlkit: error: --algorithm.NAME options set how `mamlkit train` builds the "
              f"algorithm; `mamlkit {args.command}` reads them from the run. Drop "
              + ", ".join(f"--algorithm.{k}" for k in algorithm_options) + ".", file=sys.stderr)
        return EXIT_BAD_INPUT
    args.algorithm_options = algorithm_options
    commands = {"train": cmd_train, "eval": cmd_eval, "list": cmd_list, "export": cmd_export}
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        try:
            if args.command == "eval":
                check_writable_run(args.run_dir)
            return commands[args.command](args)
        except NonFiniteError as error:
            print(f"mamlkit: stopped: {cli_spelling(str(error))}", file=sys.stderr)
            return EXIT_NON_FINITE
        except BaseException as error:
            if isinstance(error, SystemExit):
                raise
            described = describe(error, getattr(args, "resume_hint", ""))
            if described is None:
                if not isinstance(error, Exception):
                    raise
                traceback.print_exc()
                print("mamlkit: internal error (a bug in mamlkit; please report it with the "
                      "traceback above).", file=sys.stderr)
                return EXIT_BUG
            code, line = described
            print(f"mamlkit: error: {cli_spelling(line)}", file=sys.stderr)
            return code


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: Any = None, line: str | None = None) -> None:
    """Warnings as one ``mamlkit: warning:`` line, without source locations."""
    print(f"mamlkit: warning: {cli_spelling(str(message))}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
