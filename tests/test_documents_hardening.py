"""The JSON documents mtrec reads back are typed and checked field by field, reports are written
whole or not at all, model files are checked against their headers before they are read, and the
tuner continues its study (one search per root, one line on Ctrl-C)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import random_interactions
from test_config import CONFIG_0_1
from test_report import flat, synthetic_group, write_runs
from test_runs_hardening import reaped

from mtrec.cli import main
from mtrec.config import RunConfig
from mtrec.data.spec import DataSpec
from mtrec.errors import ConfigError, DataError, ModelFileError
from mtrec.io.checkpoint import MODEL_FILENAME, load_training_state, read_model_file, save_training_state
from mtrec.io.files import directory_lock, parse_json, read_json
from mtrec.io.schemas import MetricsSchema, parse_metrics, validate
from mtrec.model import MultitaskModel
from mtrec.runs import METRICS_FILENAME, RunState, inspect_run, read_config, read_metrics, train_run
from mtrec.studies.experiments import CONFIGURATIONS

TESTS = Path(__file__).resolve().parent
SRC = TESTS.parent / "src"


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


# ---------------------------------------------------------------------------------------------
# config.json


@pytest.fixture(scope="module")
def written_config(tmp_path_factory) -> dict:
    """config.json as a training run of this mtrec writes it (resolved step, data summary and all)."""
    run_dir = tmp_path_factory.mktemp("written") / "run"
    data, test = random_interactions(seed=1), random_interactions(seed=2)
    train_run(
        RunConfig(model={"embedding_dim": 4}, epochs=1),
        data,
        None,
        test,
        run_dir,
        summary={"name": "random", "num_users": 30, "train_size": 400, "rating_scale": [1.0, 5.0], "cold_start": {"cold_users": 0}},
    )
    return json.loads((run_dir / "config.json").read_text())


def edited(document: dict, path: str, value) -> dict:
    """A copy of ``document`` with the field at the dotted ``path`` set to ``value``."""
    copy = json.loads(json.dumps(document))
    *parents, last = path.split(".")
    target = copy
    for key in parents:
        target = target[key]
    target[last] = value
    return copy


@pytest.mark.parametrize(
    "path, value, message",
    [
        ("model.learning_rate", True, "model.learning_rate: expected a number, got true"),
        ("data.split.test_fraction", "0.1", 'data.split.test_fraction: expected a number, got "0.1"'),
        ("training.epochs", 2.0, "training.epochs: expected a whole number, got 2.0"),
        ("model.layer_sizes", [96, "64"], 'model.layer_sizes[1]: expected a whole number, got "64"'),
        ("colour", "red", "colour: unknown field"),
        ("speed.threads", 2, "speed.threads: unknown field"),
        ("data_summary.cold_start.cold_users", "0", 'data_summary.cold_start.cold_users: expected a whole number, got "0"'),
        ("evaluation.metrics", "mse", 'evaluation.metrics: expected a list, got "mse"'),
        ("format", "mtrec-model", "format: input should be 'mtrec-run'"),
    ],
)
def test_train_config_with_a_wrongly_typed_or_unknown_field_is_one_line_naming_it(written_config, path, value, message, tmp_path, capsys):
    config = tmp_path / "config.json"
    config.write_text(json.dumps(edited(written_config, path, value)))
    code = main(["train", "--no-progress", "--config", str(config), "--logdir", str(tmp_path / "run")])
    assert code == 1
    line = one_line(capsys.readouterr().err)
    assert line.startswith(f"mtrec train: error: {config}: ") and message in line
    assert not (tmp_path / "run").exists() and not list(tmp_path.glob(".run*"))


def test_every_problem_of_a_config_is_named_on_one_line():
    document = edited(edited(RunConfig().to_json(), "model.l2", "0"), "training.patience", True)
    document["model"]["colour"] = 1
    with pytest.raises(ConfigError) as caught:
        RunConfig.from_json(document)
    assert str(caught.value) == (
        'model.colour: unknown field; model.l2: expected a number, got "0"; training.patience: expected a whole number, got true'
    )
    with pytest.raises(ConfigError, match=r"speed.step: expected a string, got 1 \(and 1 more\)$"):
        RunConfig.from_json(edited(document, "speed.step", 1))


def test_configs_this_mtrec_wrote_and_those_of_mtrec_0_1_still_load(written_config, tmp_path):
    loaded = RunConfig.from_json(written_config)
    assert loaded.model["embedding_dim"] == 4 and loaded.epochs == 1 and loaded.model["step"] == "auto"
    assert RunConfig.from_json(loaded.to_json()) == loaded
    assert RunConfig.from_json(CONFIG_0_1).same_run(RunConfig(model={"seed": 1, "num_threads": 1}, epochs=2))
    (tmp_path / "config.json").write_text(json.dumps(edited(CONFIG_0_1, "model.embedding_sharing", "yes")))
    with pytest.raises(DataError, match=r"config\.json: model\.embedding_sharing: expected true or false, got \"yes\""):
        RunConfig.load(tmp_path)


@pytest.mark.parametrize(
    "version, message",
    [
        (4, "a run config of format 4; this mtrec"),
        ("3", 'format_version: expected one of 1, 2, 3, got "3"'),
        (True, "format_version: expected one of 1, 2, 3, got true"),
    ],
)
def test_a_config_of_an_unknown_format_version_is_refused(written_config, version, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig.from_json(edited(written_config, "format_version", version))


def test_this_mtrec_writes_config_format_3(written_config):
    assert written_config["format_version"] == 3 and "embedding_sharing" not in written_config["model"]


#: Runs of mtrec 0.2.0 (config format 2) before ``sharing`` existed, each trained by that commit's
#: ``mtrec train --epochs 1 --embedding-dim 4 --threads 1 --device cpu --ratings small.csv`` (small.csv:
#: test_hardening.small_ratings): 2a1eb51 recorded no digests yet, f70a1e9 did.
GOLDEN_RUNS_0_2_0 = {commit: TESTS / "golden" / f"run-0.2.0-{commit}" for commit in ("2a1eb51", "f70a1e9")}


@pytest.mark.parametrize("commit", GOLDEN_RUNS_0_2_0)
def test_configs_mtrec_0_2_0_wrote_before_sharing_load_as_the_same_run(commit, tmp_path):
    folder = GOLDEN_RUNS_0_2_0[commit]
    assert json.loads((folder / "config.json").read_text())["model"]["embedding_sharing"] is True
    config = RunConfig.load(folder)
    assert config.model["sharing"] == "hard" and "embedding_sharing" not in config.model
    now = RunConfig(model={"embedding_dim": 4, "num_threads": 1, "device": "cpu"}, data=DataSpec(ratings="small.csv"), epochs=1)
    assert config.same_run(now) and not config.same_run(now.replace(sharing="separate"))
    wrong = edited(json.loads((folder / "config.json").read_text()), "model.embedding_sharing", "yes")
    (tmp_path / "config.json").write_text(json.dumps(wrong))
    with pytest.raises(DataError) as caught:
        RunConfig.load(tmp_path)
    assert str(caught.value) == f'{tmp_path / "config.json"}: model.embedding_sharing: expected true or false, got "yes"'


# ---------------------------------------------------------------------------------------------
# JSON files nested too deeply, unreadable or missing: one line naming the file, whoever reads them

#: Each reader of a run's JSON files, the file it reads and what it calls it.
READERS = [
    (read_metrics, METRICS_FILENAME, "metrics file"),
    (read_config, "config.json", "run config"),
    (RunConfig.load, "config.json", "run config"),
]

#: Valid JSON syntax nested far deeper than Python's parser recurses.
NESTED = "[" * 100_000 + "]" * 100_000


@pytest.fixture
def nested_run(tmp_path) -> Path:
    """A run directory whose config.json and metrics.json are both :data:`NESTED`."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for name in ("config.json", METRICS_FILENAME):
        (run_dir / name).write_text(NESTED)
    return run_dir


@pytest.mark.parametrize("reader, file, what", READERS)
def test_each_reader_refuses_a_deeply_nested_json_file_in_one_line_naming_it(nested_run, reader, file, what):
    with pytest.raises(DataError) as caught:
        reader(nested_run)
    assert str(caught.value) == f"{nested_run / file}: not a readable {what} (nested too deeply)"


def test_a_deeply_nested_run_is_unfinished_and_every_command_says_so_in_one_line(nested_run, tmp_path, capsys):
    reason = f"{nested_run / METRICS_FILENAME}: not a readable metrics file (nested too deeply)"
    assert inspect_run(nested_run) == RunState("unfinished", reason)
    assert main(["train", "--no-progress", "--config", str(nested_run / "config.json"), "--logdir", str(tmp_path / "r")]) == 1
    assert one_line(capsys.readouterr().err) == (f"mtrec train: error: {nested_run / 'config.json'}: not a readable run config (nested too deeply)")
    assert main(["recommend", "--model", str(nested_run), "--user", "1"]) == 1
    assert one_line(capsys.readouterr().err) == f"mtrec recommend: error: {nested_run} is not a complete run (unfinished): {reason}"
    assert not (tmp_path / "r").exists()


def test_the_json_parser_gives_a_value_error_for_a_document_nested_too_deeply():
    with pytest.raises(ValueError, match="^nested too deeply$"):
        parse_json(NESTED.encode())  # a model file's header is bytes
    assert parse_json(b'{"a": [[1]]}') == {"a": [[1]]}


def test_a_document_nested_too_deeply_to_check_is_one_line():
    document: list = []
    for _ in range(100_000):
        document = [document]
    with pytest.raises(DataError, match="^metrics.json: not a JSON document"):
        validate(MetricsSchema, document, DataError, "metrics.json")


@pytest.mark.parametrize("reader, file, what", READERS)
@pytest.mark.parametrize("make, reason", [(lambda path: None, "No such file or directory"), (Path.mkdir, "Is a directory")])
def test_each_reader_names_a_file_it_cannot_read_with_the_systems_reason(reader, file, what, make, reason, tmp_path):
    make(tmp_path / file)
    with pytest.raises(DataError) as caught:
        reader(tmp_path)
    assert str(caught.value) == f"{tmp_path / file}: cannot read the {what}: {reason}"


def test_a_json_file_that_is_not_utf_8_is_named(tmp_path):
    path = tmp_path / "config.json"
    path.write_bytes(b'{"model": "\xff"}')
    with pytest.raises(DataError) as caught:
        read_json(path, "run config")
    assert str(caught.value).startswith(f"{path}: not a readable run config ('utf-8' codec can't decode byte 0xff")


# ---------------------------------------------------------------------------------------------
# metrics.json and the report


@pytest.fixture
def two_runs(tmp_path) -> Path:
    """Finished runs of shared-0.5-0.5 with seeds 0 and 1 under ``tmp_path / "run"``."""
    group = synthetic_group(CONFIGURATIONS["shared-0.5-0.5"], flat([1.0, 1.1], 3), flat([0.05, 0.06], 3))
    write_runs(group, tmp_path / "run")
    return tmp_path / "run"


#: Valid JSON of the wrong shape: how each is made from a run's metrics, and what the error says.
WRONG_SHAPES = {
    "a string for a number": (lambda m: m["epochs"][1].update(test_mse="0.9"), 'epochs[1].test_mse: expected a number, got "0.9"'),
    "an unknown field": (lambda m: m["epochs"][0].update(colour=1), "epochs[0]: unknown field 'colour'"),
    "a selected epoch not trained": (lambda m: m.update(selected={"epoch": 9}), "selected.epoch: 9 is not one of the 3 epochs"),
    "epochs out of order": (lambda m: m["epochs"].reverse(), "epochs: numbered 3, 2, 1, not 1 to 3"),
    "an oracle epoch not trained": (
        lambda m: m.update(oracle_best_test_mse={"value": 1.0, "epoch": 4}),
        "oracle_best_test_mse.epoch: 4 is not one of the 3 epochs",
    ),
    "a number for a record": (lambda m: m.update(final=3), "final: expected an object, got 3"),
    "no final record": (lambda m: m.pop("final"), "final: missing"),
    "true for an epoch number": (lambda m: m["epochs"][2].update(epoch=True), "epochs[2].epoch: expected a whole number, got true"),
    "a selection without its score": (
        lambda m: m.update(selection={"criterion": "joint"}),
        "selection: score: a selection by a criterion records its score",
    ),
}


def damaged_metrics(run_dir: Path, shape: str) -> Path:
    """``run_dir``'s metrics.json made of the wrong ``shape``; returns its path."""
    path = run_dir / METRICS_FILENAME
    metrics = json.loads(path.read_text())
    WRONG_SHAPES[shape][0](metrics)
    path.write_text(json.dumps(metrics))
    return path


@pytest.mark.parametrize("shape", WRONG_SHAPES)
def test_parse_metrics_names_the_file_and_the_field_of_each_wrong_shape(two_runs, shape):
    path = damaged_metrics(two_runs / "shared-0.5-0.5" / "seed-1", shape)
    with pytest.raises(DataError) as caught:
        parse_metrics(json.loads(path.read_text()), path)
    assert str(caught.value) == f"{path}: {WRONG_SHAPES[shape][1]}"


# The shapes runs.read_metrics does not refuse by itself (until it calls parse_metrics).
@pytest.mark.parametrize("shape", list(WRONG_SHAPES)[:5])
def test_a_metrics_json_of_the_wrong_shape_is_left_out_of_the_report_naming_the_field(two_runs, shape, tmp_path, capsys):
    path = damaged_metrics(two_runs / "shared-0.5-0.5" / "seed-1", shape)
    message = WRONG_SHAPES[shape][1]
    assert main(["report", str(two_runs), "--out", str(tmp_path / "report")]) == 0
    captured = capsys.readouterr()
    warning = one_line(captured.err)
    assert warning.startswith(f"mtrec: warning: {path}: ") and message in warning
    assert "report of 1 runs" in captured.out and "(1 left out, named above)" in captured.out
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert [len(group["seeds"]) for group in report["groups"]] == [1] and message in report["left_out"][0]


def test_parse_metrics_gives_back_a_valid_document_as_it_is(two_runs):
    path = two_runs / "shared-0.5-0.5" / "seed-0" / METRICS_FILENAME
    document = json.loads(path.read_text())
    assert parse_metrics(document, path) is document
    with pytest.raises(DataError) as caught:
        parse_metrics({k: v for k, v in document.items() if k != "completed"} | {"epochs": {}}, path)
    assert str(caught.value) == f"{path}: completed: missing; epochs: expected a list, got {{}}"


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


@pytest.mark.slow
@pytest.mark.parametrize("failure", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_a_report_that_fails_midway_leaves_the_previous_report_whole_and_nothing_half_written(two_runs, failure, tmp_path, monkeypatch, capsys):
    import mtrec.studies.report

    out = tmp_path / "report"
    assert main(["report", str(two_runs), "--out", str(out)]) == 0
    before = folder_bytes(out)
    assert {"report.md", "report.html", "report.json"} <= set(before)
    group = synthetic_group(CONFIGURATIONS["separate-0.5-0.5"], flat([1.2, 1.3], 3), flat([0.04, 0.05], 3))
    write_runs(group, two_runs)
    written = []

    def failing_html(blocks, folder, title):
        written.extend(path.name for path in folder.iterdir())  # the figures are written by now
        raise failure

    monkeypatch.setattr(mtrec.studies.report, "to_html", failing_html)
    code = main(["report", str(two_runs), "--out", str(out)])
    assert code == (1 if isinstance(failure, OSError) else 130)
    assert one_line(capsys.readouterr().err) in ("mtrec report: error: No space left on device", "mtrec report: interrupted")
    assert written and folder_bytes(out) == before
    assert sorted(entry.name for entry in tmp_path.iterdir()) == ["report", "run"]


def test_a_report_that_cannot_be_made_leaves_no_report_folder(two_runs, tmp_path, capsys):
    for seed in (0, 1):
        damaged_metrics(two_runs / "shared-0.5-0.5" / f"seed-{seed}", "a selected epoch not trained")
    assert main(["report", str(two_runs), "--out", str(tmp_path / "report")]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1] == f"mtrec report: error: no finished run in {two_runs}" and len(lines) == 3
    assert all(line.endswith("metrics.json: selected.epoch: 9 is not one of the 3 epochs") for line in lines[:2])
    assert sorted(entry.name for entry in tmp_path.iterdir()) == ["run"]


def test_a_report_folder_holding_other_files_is_never_replaced(two_runs, tmp_path, capsys):
    out = tmp_path / "notes"
    out.mkdir()
    (out / "mine.txt").write_text("mine")
    assert main(["report", str(two_runs), "--out", str(out)]) == 1
    assert one_line(capsys.readouterr().err) == (f"mtrec report: error: {out} holds files that are not a report's (mine.txt): choose another --out")
    assert folder_bytes(out) == {"mine.txt": b"mine"}


@pytest.mark.slow
def test_a_report_into_a_symlinked_out_replaces_what_the_link_points_at_and_keeps_the_link(two_runs, tmp_path, capsys):
    target, link = tmp_path / "store" / "report", tmp_path / "out"
    target.parent.mkdir()
    link.symlink_to(target, target_is_directory=True)  # dangling: the first report makes the target
    for extra_seed in (False, True):
        if extra_seed:  # the second report has more to say
            group = synthetic_group(CONFIGURATIONS["separate-0.5-0.5"], flat([1.2], 3), flat([0.04], 3))
            write_runs(group, two_runs)
        assert main(["report", str(two_runs), "--out", str(link)]) == 0
        assert f"report of {3 if extra_seed else 2} runs: {link / 'report.md'}" in capsys.readouterr().out
        assert link.is_symlink() and os.readlink(link) == str(target)
        groups = json.loads((target / "report.json").read_text())["groups"]
        assert [len(group["seeds"]) for group in groups] == ([2, 1] if extra_seed else [2])
        assert sorted(entry.name for entry in tmp_path.iterdir()) == ["out", "run", "store"]
        assert sorted(entry.name for entry in target.parent.iterdir()) == ["report"]  # no staging, no .old, no lock


#: A report writer that says "writing" once it has the report's lock, then waits for the file
#: argv[1] before drawing its figures.
WRITER = """
import sys, time
from pathlib import Path
import mtrec.studies.report as report
go, draw = Path(sys.argv[1]), report.write_figures
def waiting(collection, out):
    print("writing", flush=True)
    while not go.exists():
        time.sleep(0.05)
    return draw(collection, out)
report.write_figures = waiting
from mtrec.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.slow
def test_two_reports_into_one_folder_never_mix_the_second_is_refused_in_one_line(two_runs, tmp_path, capsys):
    out, go = tmp_path / "report", tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{SRC}", "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(go), "report", str(two_runs), "--out", str(out)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    with reaped([first]):
        assert first.stdout.readline() == "writing\n"
        assert main(["report", str(two_runs), "--out", str(out)]) == 1
        assert one_line(capsys.readouterr().err) == (
            f"mtrec report: error: {out} is in use by process {first.pid} on {socket.gethostname()}: wait until it ends, or choose another folder"
        )
        assert not out.exists()
        go.touch()
        stdout, stderr = first.communicate(timeout=240)
    assert first.returncode == 0, stderr
    assert stdout.splitlines()[-1] == f"report of 2 runs: {out / 'report.md'}, {out / 'report.html'}"
    assert [len(group["seeds"]) for group in json.loads((out / "report.json").read_text())["groups"]] == [2]
    assert sorted(entry.name for entry in tmp_path.iterdir()) == ["go", "report", "run"]


# ---------------------------------------------------------------------------------------------
# Model files and checkpoints, checked against their headers before they are read


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    data = random_interactions(num_users=20, num_items=30, n=200, seed=4)
    return MultitaskModel(embedding_dim=4, seed=1).fit(data, 1).save(tmp_path_factory.mktemp("model") / "run")


def header_of(path: Path) -> tuple[dict, bytes]:
    """The header of a safetensors file and the tensor data after it."""
    payload = path.read_bytes()
    length = int.from_bytes(payload[:8], "little")
    return json.loads(payload[8 : 8 + length]), payload[8 + length :]


def with_header(path: Path, header: dict, data: bytes) -> None:
    text = json.dumps(header).encode()
    path.write_bytes(len(text).to_bytes(8, "little") + text + data)


@pytest.mark.parametrize("command", [["recommend", "--user", "1"], ["serve"]])
def test_a_model_file_far_larger_than_its_header_declares_is_refused_unread(model_file, command, tmp_path, capsys, monkeypatch):
    import uvicorn

    # Were the file taken, serve would start a server and wait for requests: fail at once instead.
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: pytest.fail("mtrec serve started a server for a refused model"))
    huge = tmp_path / MODEL_FILENAME
    huge.write_bytes(model_file.read_bytes())
    declared = huge.stat().st_size - 8 - int.from_bytes(huge.read_bytes()[:8], "little")
    with open(huge, "r+b") as handle:
        handle.truncate(100 * 2**30)  # sparse: costs no disk
    assert main([command[0], "--model", str(huge), *command[1:]]) == 1
    line = one_line(capsys.readouterr().err)
    assert line.startswith(f"mtrec {command[0]}: error: {huge} is not a readable mtrec model")
    assert f"its header declares {declared:,} bytes of tensors, but the file holds" in line


def test_a_header_whose_sizes_disagree_with_its_tensors_is_refused_naming_the_tensor(model_file, tmp_path):
    header, data = header_of(model_file)
    name = next(key for key in header if key.startswith("network.") and len(header[key]["shape"]) == 2)
    rows, columns = header[name]["shape"]
    cases = {
        "shape": (
            {**header, name: {**header[name], "shape": [rows * 2, columns]}},
            f"tensor {name}: F32 of shape ({rows * 2}, {columns}) is {rows * columns * 8:,} bytes, but its span is {rows * columns * 4:,}",
        ),
        "dtype": ({**header, name: {**header[name], "dtype": "Q9"}}, f"tensor {name}: unknown dtype 'Q9'"),
        "offsets": (
            {**header, name: {**header[name], "data_offsets": [-4, rows * columns * 4 - 4]}},
            f"tensor {name}: its shape and offsets are not whole numbers",
        ),
    }
    for case, (changed, message) in cases.items():
        path = tmp_path / f"{case}.safetensors"
        with_header(path, changed, data)
        with pytest.raises(ModelFileError) as caught:
            read_model_file(path)
        assert str(caught.value) == f"{path} is not a readable mtrec model (truncated or corrupt): {message}", case


def test_a_header_that_claims_more_than_the_file_or_overlaps_its_tensors_is_refused(model_file, tmp_path):
    header, data = header_of(model_file)
    claims = tmp_path / "claims.safetensors"
    claims.write_bytes((2**62).to_bytes(8, "little") + model_file.read_bytes()[8:])
    with pytest.raises(ModelFileError, match=r"its header claims 4,611,686,018,427,387,904 bytes, more than the file"):
        read_model_file(claims)
    first, second = sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])[:2]
    overlapping = {
        **header,
        second: {**header[second], "data_offsets": [header[second]["data_offsets"][0] - 4, header[second]["data_offsets"][1] - 4]},
    }
    path = tmp_path / "overlap.safetensors"
    with_header(path, overlapping, data)
    with pytest.raises(ModelFileError, match=rf"tensor {second} starts at byte [\d,]+ of the data, not at [\d,]+ where"):
        read_model_file(path)


def saved_checkpoint(path: Path, **info_changes) -> Path:
    record = {"epoch": 1, "train_bpr": 0.3, "train_mse": 1.1, "train_loss": 0.7, "test_mse": None, "test_mrr": None, "seconds": 0.1}
    info = {
        "epoch": 1,
        "history": [record],
        "optimizer_groups": [{"lr": 0.001, "betas": [0.9, 0.999], "params": [0]}],
        "scheduler": None,
        "weighting": {},
        "stopped": False,
        **info_changes,
    }
    return save_training_state(path, {"network.x": torch.ones(3, 2), "sampler.generator": torch.zeros(5, dtype=torch.uint8)}, info)


def test_a_checkpoint_is_checked_against_its_header_and_its_facts_against_their_schema(tmp_path):
    path = saved_checkpoint(tmp_path / "checkpoint.safetensors")
    tensors, info = load_training_state(path)
    assert torch.equal(tensors["network.x"], torch.ones(3, 2)) and info["history"][0]["train_mse"] == 1.1
    with open(path, "r+b") as handle:
        handle.truncate(100 * 2**30)
    with pytest.raises(ModelFileError, match=rf"^{path} is not a readable mtrec checkpoint: its header declares 29 bytes"):
        load_training_state(path)
    cases = {
        "epoch": ("3", 'info: epoch: expected a whole number, got "3"'),
        "history": ([{"epoch": 1}], "info: history[0].train_loss: missing"),
        "stopping": ({"best_score": 0.2, "best_epoch": 1}, "info: stopping.waited: missing"),
        "stopped": (0, "info: stopped: expected true or false, got 0"),
    }
    for field, (value, message) in cases.items():
        path = saved_checkpoint(tmp_path / f"{field}.safetensors", **{field: value})
        with pytest.raises(ModelFileError) as caught:
            load_training_state(path)
        assert str(caught.value).startswith(f"{path}: {message}"), field


# ---------------------------------------------------------------------------------------------
# The tuner


@pytest.fixture(scope="module")
def ratings(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tune") / "mine.csv"
    rng = np.random.default_rng(0)
    rows = [f"u{u},i{i},{rng.integers(1, 6)}" for u in range(50) for i in rng.choice(60, 25, replace=False)]
    path.write_text("user,item,rating\n" + "\n".join(rows) + "\n")
    return path


def tune_argv(root: Path, ratings: Path, trials: int) -> list[str]:
    """A search from the quality preset, whose settings all lie in the search space: trial 0 draws nothing."""
    return ["tune", "--trials", str(trials), "--root", str(root), "--ratings", str(ratings), "--epochs", "4", "--no-progress", "--threads", "1"]


def study_trials(root: Path) -> list:
    import optuna

    return optuna.load_study(study_name="mtrec", storage=f"sqlite:///{root / 'study.db'}").trials


@pytest.mark.slow
def test_a_rerun_of_tune_continues_the_study_and_repeats_no_trial(ratings, tmp_path, capsys):
    root = tmp_path / "tune"
    assert main(tune_argv(root, ratings, 3)) == 0
    assert main(tune_argv(root, ratings, 3)) == 0
    assert "6 trials in the study" in capsys.readouterr().out
    trials = study_trials(root)
    assert [t.number for t in trials] == list(range(6)) and sorted(p.name for p in root.glob("trial-*")) == [f"trial-{n:04d}" for n in range(6)]
    params = [t.params for t in trials]
    assert all(params[n] not in params[:n] for n in range(1, 6)), params
    base = trials[0].params  # the base config (the quality preset's settings), enqueued once
    assert (base["learning_rate"], base["watch_loss"], base["factorization_weight"], base["row_l2"]) == (0.005, "softmax", 1.0, 0.01)
    assert sum(p == base for p in params) == 1


def test_two_tunes_on_one_root_never_work_at_once(ratings, tmp_path, capsys):
    root = tmp_path / "tune"
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with directory_lock(root):
            held.set()
            release.wait(60)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(10)
        assert main(tune_argv(root, ratings, 1)) == 1
    finally:
        release.set()
        holder.join()
    line = one_line(capsys.readouterr().err)
    assert line.startswith(f"mtrec tune: error: {root} is in use by process {os.getpid()} on ")
    assert not root.exists()


@pytest.mark.slow
def test_ctrl_c_in_tune_is_one_line_and_the_study_keeps_its_finished_trials(ratings, tmp_path):
    root = tmp_path / "tune"
    env = {**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{SRC}", "OMP_NUM_THREADS": "1"}
    # Ctrl-C at the 10th training step: in the third trial (each trains 4 epochs of one batch of 4096).
    code = f"import faults; faults.run('step', 10, 'INT', {tune_argv(root, ratings, 20)!r})"
    result = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 130, result.stderr
    assert one_line(result.stderr) == (
        f"mtrec tune: interrupted; the trials that finished (2 in this run) stay in {root / 'study.db'}: run the same command to continue"
    )
    states = [t.state.name for t in study_trials(root)]
    assert states == ["COMPLETE", "COMPLETE", "FAIL"]
    assert all((root / f"trial-{n:04d}" / METRICS_FILENAME).is_file() for n in (0, 1))
