"""The data options of the command line and ``mtrec datasets``."""

from __future__ import annotations

import argparse
import json

import pytest

from mtrec.cli import main
from mtrec.cli.options import add_run_arguments, run_config
from mtrec.data import RELEASES
from mtrec.errors import ConfigError


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_run_arguments(parser)
    return parser.parse_args(list(argv))


def load_split(args: argparse.Namespace, seed: int, progress: bool = False):
    """What `mtrec train` makes of the options: train and test, the data spec as config.json has it, the summary."""
    config = run_config(args, seed=seed)
    train, validation, test = config.data.load_split(args.data_dir, progress=progress)
    return train, test, config.data.to_json(), config.data.describe(train, validation, test)


def test_datasets_list_shows_the_registry_and_presence(data_dir, capsys):
    assert main(["datasets", "list", "--data-dir", str(data_dir)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["name", "archive", "folder", "ratings", "scale", "checksum", "present"]
    rows = {line.split()[0]: line.split() for line in out[1:8]}
    assert list(rows) == ["100k", "1m", "10m", "20m", "25m", "32m", "latest-small"]
    assert rows["100k"][-1] == "yes" and rows["1m"][-1] == "no"
    assert "0e33842e24a9c977be4e0107933c0723" in rows["100k"]
    assert all(release.checksum_source in line for release, line in zip(RELEASES.values(), out[1:8]))
    assert rows["10m"][2] == "ml-10M100K" and rows["10m"][4] == "0.5-5"
    assert out[-1] == f"data directory: {data_dir}"


def test_datasets_list_reads_the_data_dir_from_the_environment(data_dir, monkeypatch, capsys):
    monkeypatch.setenv("MTREC_DATA_DIR", str(data_dir))
    assert main(["datasets", "list"]) == 0
    assert capsys.readouterr().out.splitlines()[1].endswith("yes")


def test_datasets_download_of_a_present_release_needs_no_network(data_dir, capsys):
    assert main(["datasets", "download", "100k", "--data_dir", str(data_dir)]) == 0
    assert capsys.readouterr().out.strip() == f"100k: {data_dir / 'ml-100k'}"


def test_datasets_without_action_shows_usage(capsys):
    assert main(["datasets"]) == 2
    assert "list" in capsys.readouterr().out


def test_default_options_give_the_assignments_split(data_dir):
    train, test, spec, info = load_split(parse("--data-dir", str(data_dir)), seed=0, progress=False)
    assert (len(train), len(test)) == (95_000, 5_000)
    assert spec == {"source": {"dataset": "100k"}, "split": {"method": "random", "test_fraction": 0.05, "seed": 0}}
    assert (info["train_size"], info["test_size"], info["num_users"], info["num_items"]) == (95_000, 5_000, 943, 1682)
    assert info["rating_scale"] == [1.0, 5.0] and info["has_ratings"] is True
    assert set(info["cold_start"]) >= {"cold_users", "cold_items", "cold_ratings"}
    assert json.loads(json.dumps(info)) == info and info["valid_size"] == 0


def test_canonical_split_option(data_dir):
    train, test, spec, info = load_split(parse("--data_dir", str(data_dir), "--split", "u1"), seed=0, progress=False)
    assert (len(train), len(test)) == (80_000, 20_000)
    assert spec["split"] == {"method": "u1", "seed": 0} and info["cold_start"]["cold_items"] == 32


@pytest.mark.parametrize(
    "argv, message",
    [
        (("--test-fraction", "1.5"), r"argument --test-fraction: must be in \(0, 1\), got 1.5"),
        (("--test_fraction", "0"), r"argument --test-fraction: must be in \(0, 1\), got 0.0"),
        (("--leave-k", "1"), "--leave-k applies to --split user, not --split random"),
        (("--split", "user", "--cutoff", "5"), "--cutoff applies to --split temporal"),
        (("--items", "x.csv"), "--items applies to --ratings files only"),
        (("--dataset", "1m", "--split", "u2"), "--split u2 is one of MovieLens 100K's own splits"),
        (("--split", "temporal", "--cutoff", "5", "--last-k", "2"), "--cutoff and --last-k are two ways"),
        (("--ratings", "x.csv", "--dataset", "1m"), "--dataset and --ratings are two data sources"),
        (("--split", "user", "--leave-k", "1", "--test-fraction", "0.1"), "--test-fraction and --leave-k are two ways"),
        (("--split", "temporal", "--last-k", "1", "--test-fraction", "0.1"), "--test-fraction and --last-k are two"),
        (("--split", "u1", "--test-fraction", "0.1"), "--test-fraction does not apply to --split u1"),
    ],
)
def test_bad_options_are_config_errors(data_dir, argv, message):
    with pytest.raises(ConfigError, match=message):
        load_split(parse("--data-dir", str(data_dir), *argv), seed=0, progress=False)


def test_own_ratings_file_with_user_split(tmp_path):
    rows = [f"u{user},i{(user * 7 + k) % 40},{1 + k % 5}" for user in range(30) for k in range(6)]
    path = tmp_path / "mine.csv"
    path.write_text("user,item,stars\n" + "\n".join(rows) + "\n")
    args = parse("--ratings", str(path), "--split", "user", "--leave-k", "2", "--rating-scale", "1", "5")
    train, test, spec, info = load_split(args, seed=3, progress=False)
    assert (len(train), len(test)) == (120, 60)
    assert spec["source"] == {"ratings": str(path), "rating_scale": [1.0, 5.0]}
    assert spec["split"] == {"method": "user", "leave_k": 2, "seed": 3}
    assert info["cold_start"]["cold_users"] == 0


def test_implicit_file_has_no_ratings(tmp_path):
    path = tmp_path / "clicks.tsv"
    path.write_text("".join(f"{u}\t{i}\t{u * 100 + i}\n" for u in range(20) for i in range(u % 5, 10)))
    args = parse("--ratings", str(path), "--time-col", "2", "--split", "temporal", "--last-k", "1")
    train, test, spec, info = load_split(args, seed=0, progress=False)
    assert not train.has_ratings and info["has_ratings"] is False and info["rating_scale"] is None
    assert len(test) == 20 and spec["split"] == {"method": "temporal", "last_k": 1}


def test_a_separator_of_two_characters_is_a_usage_error(tmp_path, capsys):
    path = tmp_path / "r.txt"
    path.write_text("user||item||rating\n1||2||3\n")
    argv = ["train", "--ratings", str(path), "--sep", "||", "--epochs", "1", "--no-progress", "--logdir", str(tmp_path)]
    assert main(argv) == 2
    assert capsys.readouterr().err.splitlines() == ["mtrec train: error: sep must be one character or '::', got '||'"]


def test_a_split_loader_reads_the_data_once_for_every_seed(data_dir, monkeypatch):
    from mtrec.data.spec import DataSpec

    reads = []
    real = DataSpec.load
    monkeypatch.setattr(DataSpec, "load", lambda *a, **k: reads.append(1) or real(*a, **k))
    load = run_config(parse()).data.split_loader(str(data_dir))
    splits = [load(seed) for seed in (0, 1, 2)]
    assert len(reads) == 1
    assert [len(test) for _, _, test, _ in splits] == [5_000] * 3
    assert not (splits[0][2].users == splits[1][2].users).all()  # each seed its own split
    with pytest.raises(ConfigError, match="--leave-k applies to --split user"):
        run_config(parse("--leave-k", "1"))  # checked before any data is read
