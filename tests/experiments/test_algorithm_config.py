"""The [algorithm] table: every constructor argument of an algorithm, from a config file or
--algorithm.NAME VALUE, checked against the algorithm's signature before any work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from torch import nn

from mamlkit import load_run
from mamlkit.algorithm_config import check_table, settable, split_options
from mamlkit.algorithms import ALGORITHMS, MAML
from mamlkit.cli import main
from mamlkit.config import make_config, read_config_file
from mamlkit.core.inner_optim import Adam
from mamlkit.experiments.common import build_learner

TINY = ["--iterations", "4", "--meta-batch-size", "2", "--val-every", "2", "--val-tasks", "3",
        "--checkpoint-every", "2", "--test-tasks", "4", "--eval-inner-steps", "2",
        "--eval-shots", "5", "--no-plots", "--no-tensorboard", "--threads", "1"]


def test_imaml_arguments_from_the_command_line_train_evaluate_and_are_recorded(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "sinusoid", "--algo", "imaml", "--algorithm.regularization", "2.0",
                 "--algorithm.cg_steps=3", "--run-dir", str(run), *TINY]) == 0
    assert "iMAML" in capsys.readouterr().out
    saved = json.loads((run / "config.json").read_text())
    assert saved["algorithm"] == {"regularization": 2.0, "cg_steps": 3}
    learner = load_run(run)
    assert learner.regularization == 2.0 and learner.cg_steps == 3
    assert (run / "eval" / "results.json").is_file()
    # resuming with another value is refused before anything is written
    assert main(["train", "sinusoid", "--algo", "imaml", "--algorithm.regularization", "3",
                 "--algorithm.cg_steps", "3", "--run-dir", str(run), "--resume"]) == 2
    assert "--resume cannot change algorithm" in capsys.readouterr().err


@pytest.mark.parametrize(("options", "expected"), [
    (["--algorithm.no_such_key", "1"], "Unknown key algorithm.no_such_key"),
    (["--algorithm.inner_lr", "0.1"], "inner_lr is a top-level setting; set it once, with "
                                      "--inner-lr"),
    (["--algorithm.cg_steps", "2.5"], "algorithm.cg_steps of imaml must be int, got str '2.5'"),
    (["--algorithm.loss", "mse"], "the loss is chosen by the experiment"),
    (["--algorithm.cg_steps"], "--algorithm.cg_steps needs a value"),
])
def test_bad_algorithm_options_are_refused_in_one_line_before_a_run_folder(
        tmp_path, capsys, options, expected):
    run = tmp_path / "run"
    code = main(["train", "sinusoid", "--algo", "imaml", *options, "--run-dir", str(run), *TINY])
    err = capsys.readouterr().err
    assert code == 2 and expected in err and len(err.strip().splitlines()) == 1, err
    assert not run.exists()
    if "no_such_key" in expected:  # the valid keys are listed
        for key in ("regularization", "cg_steps", "adam_betas", "inner_optimizer"):
            assert key in err


def test_config_file_table_and_command_line_merge_and_are_type_checked(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('algo = "reptile"\n[algorithm]\ninner_data = "support"\n'
                    "adam_betas = [0.5, 0.9]\n")
    values = read_config_file(path)
    config = make_config(values, {"algorithm": {"inner_optimizer": "adam"}})
    assert config.algorithm == {"inner_data": "support", "adam_betas": (0.5, 0.9),
                                "inner_optimizer": "adam"}
    learner = build_learner(config, nn.Linear(1, 1), "mse")
    assert learner.inner_data == "support" and isinstance(learner.inner_optimizer, Adam)
    assert learner.inner_optimizer.betas == (0.5, 0.9)
    with pytest.raises(ValueError, match=r"adam_betas of reptile must be tuple\[float, float\]"):
        make_config(values, {"algorithm": {"adam_betas": [0.5, 0.9, 0.1]}})
    with pytest.raises(ValueError, match="Config key 'algorithm' in .* must be a table"):
        bad = tmp_path / "bad.json"
        bad.write_text('{"algorithm": 3}')
        read_config_file(bad)
    with pytest.raises(ValueError, match="Unknown key algorithm.regularization.*maml takes"):
        make_config({"algo": "maml", "algorithm": {"regularization": 1.0}})


def test_the_keys_come_from_the_signature_so_a_new_algorithm_gets_them():
    class Damped(MAML):
        """A made-up algorithm with arguments of its own."""

        def __init__(self, model: nn.Module, *, damping: float = 0.5, mode: str | None = None,
                     **kwargs: object) -> None:
            super().__init__(model, **kwargs)
            self.damping, self.mode = damping, mode

    keys = settable(Damped)
    assert {"damping", "mode", "adapt", "batchnorm"} <= set(keys)
    assert not {"model", "loss", "inner_lr", "forward"} & set(keys)
    assert check_table("damped", Damped, {"damping": 2, "mode": None}, "x") == {
        "damping": 2.0, "mode": None}
    with pytest.raises(ValueError, match="algorithm.damping of damped must be float"):
        check_table("damped", Damped, {"damping": "high"}, "x")
    # every registered algorithm's own arguments are there
    assert {"regularization", "cg_steps"} <= set(settable(ALGORITHMS["imaml"]))
    assert {"msl_iterations", "multi_step_loss"} <= set(settable(ALGORITHMS["mamlpp"]))
    assert "inner_data" in settable(ALGORITHMS["reptile"])
    assert "head" in settable(ALGORITHMS["anil"])


def test_first_order_is_decided_by_the_algorithm_unless_set():
    model = nn.Linear(1, 1)
    assert build_learner(make_config({"algo": "fomaml"}), model, "mse").first_order
    assert not build_learner(make_config({"algo": "maml"}), model, "mse").first_order
    assert build_learner(make_config({"algo": "maml", "first_order": True}), model,
                         "mse").first_order
    build_learner(make_config({"algo": "reptile"}), model, "mse")  # never handed the flag


def test_split_options_leaves_other_arguments(tmp_path: Path):
    rest, options = split_options(["train", "x", "--algorithm.cg-steps", "5",
                                   "--algorithm.regularization=2", "--iterations", "3"])
    assert rest == ["train", "x", "--iterations", "3"]
    assert options == {"cg_steps": "5", "regularization": "2"}


def test_an_experiment_that_builds_its_own_learner_refuses_the_table(tmp_path, capsys,
                                                                     monkeypatch):
    import dataclasses

    import mamlkit.cli
    from mamlkit.experiments import get_experiment

    for name in ("sinusoid", "linear", "omniglot", "images", "banking77"):
        assert get_experiment(name).algorithm_arguments, name
    own = dataclasses.replace(get_experiment("sinusoid"), algorithm_arguments=False)
    monkeypatch.setattr(mamlkit.cli, "get_experiment", lambda name: own)
    run = tmp_path / "run"
    assert main(["train", "sinusoid", "--algorithm.adapt", "net", "--run-dir", str(run)]) == 2
    assert "sinusoid builds its learner itself and takes no [algorithm] arguments" in \
        capsys.readouterr().err
    assert not run.exists()
