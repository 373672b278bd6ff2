"""Text dataset loaders on the real published files, and their errors on bad or missing files."""

from __future__ import annotations

from pathlib import Path

import pytest

from mamlkit.text import load_banking77, load_clinc150, load_fewrel, load_text_dataset
from mamlkit.text.banking77 import BANKING77_FILES
from mamlkit.text.fewrel import mark_entities
from mamlkit.text.files import RemoteFile, download_file, sha256_of


def _dataset_root(data_root: Path, folder: str) -> Path:
    if not (data_root / folder).is_dir():
        pytest.skip(f"{folder}/ not found under {data_root} (set MAMLKIT_DATA)")
    return data_root


def test_banking77_counts(data_root):
    root = _dataset_root(data_root, "banking77")
    data = load_banking77(root)
    assert data.num_classes == 77
    assert data.parts.count("train") == 10_003 and data.parts.count("test") == 3_080
    assert len(data) == 13_083
    assert min(data.class_counts()) >= 75
    assert data.texts[0] == "I am still waiting on my card?"
    assert data.class_names[data.labels[0]] == "card_arrival"
    # quoted multi-line texts are read whole and stripped
    assert not any(t != t.strip() for t in data.texts)
    test_only = load_banking77(root, parts=["test"])
    assert len(test_only) == 3_080 and set(test_only.class_counts()) == {40}


def test_clinc150_counts_domains_and_out_of_scope(data_root):
    root = _dataset_root(data_root, "clinc150")
    data = load_clinc150(root)
    assert data.num_classes == 150 and "oos" not in data.class_names
    assert set(data.class_counts()) == {150} and len(data) == 22_500
    assert len(data.class_groups) == 10
    assert sorted(c for ids in data.class_groups.values() for c in ids) == list(range(150))
    with_oos = load_clinc150(root, include_out_of_scope=True)
    assert with_oos.num_classes == 151 and with_oos.class_names[-1] == "oos"
    assert with_oos.class_counts()[-1] == 100 + 100 + 1000
    train_only = load_clinc150(root, parts=["train"])
    assert set(train_only.class_counts()) == {100}


def test_fewrel_counts_and_entity_markers(data_root):
    root = _dataset_root(data_root, "fewrel")
    data = load_fewrel(root)
    assert data.num_classes == 16 and set(data.class_counts()) == {700}
    assert data.class_names[0] == "P155" and data.class_descriptions[0] == "follows"
    for text in data.texts[:200]:
        assert text.count("<e1>") == text.count("</e1>") == 1
        assert text.count("<e2>") == text.count("</e2>") == 1
    first_p177 = data.texts[data.labels.index(data.class_names.index("P177"))]
    assert "<e1> Cape Girardeau Bridge </e1>" in first_p177
    assert "<e2> Mississippi River </e2>" in first_p177


def test_mark_entities_nested_order():
    tokens = ["a", "b", "c", "d"]
    assert mark_entities(tokens, (1, 2), (3, 3)) == "a <e1> b c </e1> <e2> d </e2>"
    assert mark_entities(tokens, (0, 0), (0, 1), ("[", "]", "{", "}")) == "[ { a ] b } c d"


def test_load_text_dataset_by_name_and_unknown_name(data_root):
    root = _dataset_root(data_root, "fewrel")
    assert load_text_dataset("FewRel", root).num_classes == 16
    with pytest.raises(ValueError, match=r"unknown text dataset 'snips'.*banking77"):
        load_text_dataset("snips", root)


def test_missing_files_name_path_and_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"banking77/banking_data/train.csv.*download=True"):
        load_banking77(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"data_full.json.*download=True"):
        load_clinc150(tmp_path)


def test_bad_options_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown BANKING77 parts"):
        load_banking77(tmp_path, parts=["dev"])
    with pytest.raises(ValueError, match="unknown FewRel file"):
        load_fewrel(tmp_path, file="train_wiki")
    with pytest.raises(ValueError, match="markers must be 4"):
        load_fewrel(tmp_path, markers=("<e1>", "</e1>"))


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_malformed_csv_row_names_file_and_line(tmp_path):
    bad = _write(tmp_path / "banking77/banking_data/train.csv",
                 'text,category\nhello,greet\n"multi\nline",greet\ntoo,many,columns\n')
    with pytest.raises(ValueError, match=r"train\.csv, line 5: expected 2 columns") as err:
        load_banking77(tmp_path, parts=["train"])
    assert str(bad) in str(err.value)
    _write(bad, 'text,category\nok,greet\n"unterminated"x,greet\n')
    with pytest.raises(ValueError, match=r"train\.csv, line 3: malformed CSV"):
        load_banking77(tmp_path, parts=["train"])
    _write(bad, "sentence,label\nok,greet\n")
    with pytest.raises(ValueError, match=r"line 1: header"):
        load_banking77(tmp_path, parts=["train"])


def test_malformed_json_names_file_and_line(tmp_path):
    _write(tmp_path / "clinc150/data/domains.json", '{"d": ["greet"]}')
    bad = _write(tmp_path / "clinc150/data/data_full.json",
                 '{\n  "train": [["hi", "greet"]],\n  "val": [["yo" "greet"]]\n}\n')
    with pytest.raises(ValueError, match=r"data_full\.json, line 3, column \d+: malformed JSON"):
        load_clinc150(tmp_path)
    _write(bad, '{"train": [["hi", "greet"], ["no intent"]], "val": [], "test": []}')
    with pytest.raises(ValueError, match=r"entry train\[1\] is \['no intent'\]"):
        load_clinc150(tmp_path)
    fewrel = _write(tmp_path / "fewrel/data/val_wiki.json",
                    '{"P1": [\n{"tokens": ["a", "b"], "h": ["a", "Q1", [[0]]], "t": ["b", "Q2", [[0]]]},'
                    '\n{"tokens": ["a", "b"], "h": ["a", "Q1", [[0]]], "t": ["b", "Q2", [[5]]]}\n]}')
    with pytest.raises(ValueError, match=r"instance P1\[1\]\['t'\]"):
        load_fewrel(tmp_path)
    _write(fewrel, '{"P1": [\n{"tokens": ["a"],,}\n]}')
    with pytest.raises(ValueError, match=r"val_wiki\.json, line 2, column"):
        load_fewrel(tmp_path)


def test_download_checks_sha256(tmp_path):
    source = _write(tmp_path / "src.csv", "text,category\nhello,greet\n")
    digest = sha256_of(source)
    good = download_file(source.as_uri(), tmp_path / "out/good.csv", digest)
    assert good.read_text() == source.read_text()
    with pytest.raises(ValueError, match=r"checksum mismatch .* expected sha256 0{64}"):
        download_file(source.as_uri(), tmp_path / "out/bad.csv", "0" * 64)
    assert not (tmp_path / "out/bad.csv").exists()
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["good.csv"]


def test_download_fills_a_missing_dataset(data_root, tmp_path, monkeypatch):
    root = _dataset_root(data_root, "banking77")
    for part, remote in list(BANKING77_FILES.items()):
        original = root / "banking77" / remote.relpath
        monkeypatch.setitem(BANKING77_FILES, part,
                            RemoteFile(remote.relpath, original.as_uri(), remote.sha256))
    data = load_banking77(tmp_path, download=True)
    assert len(data) == 13_083
    assert (tmp_path / "banking77/banking_data/test.csv").is_file()
    assert load_banking77(tmp_path, verify=True).texts == data.texts
