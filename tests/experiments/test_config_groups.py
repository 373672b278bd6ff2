"""Settings grouped by concern: every field in exactly one group, config-file tables per group,
the --help sections, and each group's checks."""

from __future__ import annotations

import pytest

from mamlkit.cli import main
from mamlkit.config import FIELDS, make_config, read_config_file
from mamlkit.config_groups import CONCERNS


def test_every_setting_belongs_to_exactly_one_concern():
    listed = [name for group in CONCERNS.values() for name in group.fields]
    assert sorted(listed) == sorted(FIELDS) and len(listed) == len(set(listed))
    assert set(CONCERNS) == {"algorithm", "loop", "data", "execution", "evaluation"}


def test_tables_per_concern_read_as_the_flat_file(tmp_path):
    flat = tmp_path / "flat.toml"
    flat.write_text('algo = "imaml"\nmeta_lr = 0.002\nways = 3\nthreads = 1\ntest_tasks = 7\n'
                    "[algorithm]\ncg_steps = 3\n")
    grouped = tmp_path / "grouped.toml"
    grouped.write_text('algo = "imaml"\n[loop]\nmeta_lr = 0.002\n[data]\nways = 3\n'
                       "[execution]\nthreads = 1\n[evaluation]\ntest_tasks = 7\n"
                       "[algorithm]\ncg_steps = 3\n")
    assert read_config_file(grouped) == read_config_file(flat)
    assert make_config(read_config_file(grouped)).algorithm == {"cg_steps": 3}


@pytest.mark.parametrize(("text", "message"), [
    ("[data]\nmeta_lr = 0.1\n", r"meta_lr in .* is in \[data\] but belongs in \[loop\]"),
    ("meta_lr = 0.1\n[loop]\nmeta_lr = 0.2\n", "meta_lr is set twice"),
    ("[loop]\nno_such = 1\n", "Unknown config key 'no_such'"),
    ("loop = 3\n", r"loop in .* must be a table \(\[loop\] in TOML\)"),
    ("[algorithm]\nalgo = \"maml\"\n", "algo is a top-level setting"),
])
def test_misplaced_settings_are_refused_naming_the_table(tmp_path, text, message):
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        make_config(read_config_file(path))


def test_help_lists_the_options_by_concern(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    sections = [out.index(f"{name} settings") for name in
                ("algorithm", "loop", "data", "execution", "evaluation")]
    assert sections == sorted(sections)
    at = {flag: out.index(f"\n  {flag} ") for flag in ("--meta-lr", "--ways", "--batching",
                                                         "--test-tasks")}
    assert sections[1] < at["--meta-lr"] < sections[2] < at["--ways"] < sections[3]
    assert sections[3] < at["--batching"] < sections[4] < at["--test-tasks"]


def test_experiment_defaults_are_written_by_concern():
    from mamlkit.config import by_concern
    from mamlkit.experiments.regression import SINUSOID

    assert SINUSOID.defaults["threads"] == 1 and SINUSOID.defaults["meta_batch_size"] == 25
    assert by_concern(loop={"meta_lr": 0.1}, data={"ways": 3}) == {"meta_lr": 0.1, "ways": 3}
    with pytest.raises(ValueError, match=r"threads in the defaults is in \[loop\] but belongs "
                                         r"in \[execution\]"):
        by_concern(loop={"threads": 1})
    with pytest.raises(ValueError, match="no settings group 'model'"):
        by_concern(model={"hidden": 3})
