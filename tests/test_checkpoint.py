"""Model files: identical predictions after a round trip, clear errors for damaged files,
atomic saves, and no code execution on load."""

import errno
import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
from conftest import random_interactions

import mtrec.io.checkpoint
from mtrec.cli import main
from mtrec.errors import ModelFileError
from mtrec.io.checkpoint import MODEL_FILENAME, available_memory, model_digest, read_model_file
from mtrec.model import MultitaskModel


@pytest.fixture(scope="module")
def fitted():
    data = random_interactions(num_users=40, num_items=50, n=800, seed=11)
    return data, MultitaskModel(embedding_dim=8, sharing="separate", seed=3).fit(data, epochs=2)


def test_save_then_load_gives_identical_predictions_and_metadata(fitted, tmp_path):
    data, model = fitted
    path = model.save(tmp_path / "run")
    assert path == tmp_path / "run" / MODEL_FILENAME
    loaded = MultitaskModel.load(tmp_path / "run")
    users, items = np.repeat(np.arange(40), 50), np.tile(np.arange(50), 40)
    for a, b in zip(model.predict(users, items), loaded.predict(users, items)):
        assert np.array_equal(a, b)
    assert loaded.get_params() == model.get_params()
    assert np.array_equal(loaded.data_.user_ids, data.user_ids)
    assert np.array_equal(loaded.data_.seen_indices, model.data_.seen_indices)
    assert [r.to_json() for r in loaded.history_] == [r.to_json() for r in model.history_]


def test_string_ids_and_item_metadata_survive_the_round_trip(tmp_path):
    from dataclasses import replace

    from mtrec.data import ItemMetadata

    data = random_interactions(num_users=5, num_items=6, n=20, seed=1)
    data = replace(
        data,
        user_ids=np.array([f"user-{i}" for i in range(5)], dtype=object),
        item_metadata=ItemMetadata([f"Movie {i} (199{i})" for i in range(6)], [1990 + i for i in range(6)], [["Drama"]] * 6),
    )
    MultitaskModel(embedding_dim=4).fit(data, 1).save(tmp_path / "m.safetensors")
    loaded = MultitaskModel.load(tmp_path / "m.safetensors")
    assert loaded.data_.user_ids.tolist() == [f"user-{i}" for i in range(5)]
    assert loaded.data_.item_metadata.titles[2] == "Movie 2 (1992)"


def test_a_truncated_file_is_a_clear_error(fitted, tmp_path):
    path = fitted[1].save(tmp_path / "run")
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ModelFileError, match="truncated or corrupt"):
        MultitaskModel.load(path)


def test_a_tampered_file_fails_its_integrity_check(fitted, tmp_path):
    path = fitted[1].save(tmp_path / "run")
    payload = bytearray(path.read_bytes())
    payload[-5] ^= 0xFF  # flip bits inside the tensor data
    path.write_bytes(bytes(payload))
    with pytest.raises(ModelFileError, match="integrity check"):
        MultitaskModel.load(path)


def test_a_file_of_another_format_version_is_refused(fitted, tmp_path):
    from safetensors.torch import load, save

    path = fitted[1].save(tmp_path / "run")
    header_len = int.from_bytes(path.read_bytes()[:8], "little")
    metadata = json.loads(path.read_bytes()[8 : 8 + header_len])["__metadata__"]
    metadata["format_version"] = "99"
    path.write_bytes(save(load(path.read_bytes()), metadata=metadata))
    with pytest.raises(ModelFileError, match="format version 99"):
        MultitaskModel.load(path)


def test_an_edited_header_fails_the_integrity_check(fitted, tmp_path):
    from safetensors.torch import load, save

    path = fitted[1].save(tmp_path / "run")
    tensors, metadata = read_model_file(path)
    header_len = int.from_bytes(path.read_bytes()[:8], "little")
    metadata = json.loads(path.read_bytes()[8 : 8 + header_len])["__metadata__"]
    metadata["config"] = metadata["config"].replace('"sharing": "separate"', '"sharing": "hard"')
    path.write_bytes(save(load(path.read_bytes()), metadata=metadata))
    with pytest.raises(ModelFileError, match="integrity check"):
        MultitaskModel.load(path)


def test_the_assignments_logdir_names_are_directories_not_files(fitted, tmp_path):
    path = fitted[1].save(tmp_path / "shared=True_LF=0.99_LR=0.01")
    assert path == tmp_path / "shared=True_LF=0.99_LR=0.01" / MODEL_FILENAME
    assert MultitaskModel.load(path.parent).get_params() == fitted[1].get_params()


def test_loading_a_pickle_never_runs_it(tmp_path):
    marker = tmp_path / "executed"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / MODEL_FILENAME
    path.write_bytes(pickle.dumps(Exploit()))
    with pytest.raises(ModelFileError):
        MultitaskModel.load(tmp_path)
    assert not marker.exists()


def test_a_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(ModelFileError, match="no model file"):
        MultitaskModel.load(tmp_path / "nowhere")


def test_a_crash_mid_save_leaves_the_previous_model_intact(fitted, tmp_path, monkeypatch):
    data, model = fitted
    path = model.save(tmp_path)
    before = path.read_bytes()
    other = MultitaskModel(embedding_dim=8, sharing="separate", seed=4).fit(data, epochs=1)

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        other.save(tmp_path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [MODEL_FILENAME]


def declared_bytes(path) -> int:
    """The bytes of tensors a safetensors file's header declares (all the file holds after the header)."""
    return path.stat().st_size - 8 - int.from_bytes(path.read_bytes()[:8], "little")


def test_a_header_that_honestly_declares_more_than_the_memory_available_is_refused_unread(tmp_path, monkeypatch):
    huge, size = tmp_path / "huge.safetensors", 100 * 2**30
    header = json.dumps({"__metadata__": {}, "network.x": {"dtype": "U8", "shape": [size], "data_offsets": [0, size]}}).encode()
    huge.write_bytes(len(header).to_bytes(8, "little") + header)
    os.truncate(huge, 8 + len(header) + size)  # sparse: costs no disk, and the layout is exactly right
    monkeypatch.setattr(mtrec.io.checkpoint, "available_memory", lambda: 2**30)
    monkeypatch.setattr(mtrec.io.checkpoint, "safe_open", lambda *args, **kwargs: pytest.fail("the tensors were read"))
    with pytest.raises(ModelFileError) as caught:
        read_model_file(huge)
    assert str(caught.value) == (
        f"{huge}: its header declares 107,374,182,400 bytes of tensors, more than the 1,073,741,824 bytes of memory available on this machine now"
    )


def test_a_model_loads_when_its_tensors_just_fit_the_memory_available_and_not_a_byte_beyond(fitted, tmp_path, monkeypatch, capsys):
    path = fitted[1].save(tmp_path / "run")
    declared = declared_bytes(path)
    monkeypatch.setattr(mtrec.io.checkpoint, "available_memory", lambda: declared)
    assert MultitaskModel.load(path).get_params() == fitted[1].get_params()
    monkeypatch.setattr(mtrec.io.checkpoint, "available_memory", lambda: declared - 1)
    assert main(["recommend", "--model", str(path.parent), "--user", "1"]) == 1
    assert capsys.readouterr().err == (
        f"mtrec recommend: error: {path}: its header declares {declared:,} bytes of tensors, more than the "
        f"{declared - 1:,} bytes of memory available on this machine now\n"
    )
    monkeypatch.setattr(mtrec.io.checkpoint, "available_memory", lambda: None)  # a platform that cannot tell
    assert MultitaskModel.load(path).get_params() == fitted[1].get_params()


def test_the_memory_available_is_positive_and_at_most_the_machines():
    assert 0 < available_memory() <= os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.slow
def test_a_loaded_model_survives_its_file_being_overwritten_in_place(fitted, tmp_path):
    path = fitted[1].save(tmp_path / "run")
    model = fitted[1]
    expected = [float(np.sum(model.predict(np.arange(40), np.arange(40) % 50)[0])), int(np.sum(model.data_.seen_indices))]
    code = (
        "import os, numpy as np; from mtrec.model import MultitaskModel; "
        f"model = MultitaskModel.load({str(path)!r}); "
        f"os.truncate({str(path)!r}, 0); "  # as `cp other.safetensors model.safetensors` begins
        "print(float(np.sum(model.predict(np.arange(40), np.arange(40) % 50)[0])), int(np.sum(model.data_.seen_indices)))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, (result.returncode, result.stderr)  # an array backed by the file: -7 (SIGBUS)
    predicted, seen = result.stdout.split()
    assert float(predicted) == pytest.approx(expected[0], rel=1e-6) and int(seen) == expected[1]


@pytest.mark.parametrize("name", ["loop", "loop.safetensors"])
def test_a_symlink_loop_as_the_model_is_named_as_such(tmp_path, capsys, name):
    loop = tmp_path / name
    os.symlink(loop.name, loop)
    target = loop if name.endswith(".safetensors") else loop / MODEL_FILENAME
    assert main(["recommend", "--model", str(loop), "--user", "1"]) == 1
    assert capsys.readouterr().err == f"mtrec recommend: error: {target}: {os.strerror(errno.ELOOP)}\n"
    with pytest.raises(ModelFileError, match=f"^{target}: {os.strerror(errno.ELOOP)}$"):
        read_model_file(loop)


def test_a_header_nested_too_deeply_is_refused_in_words(tmp_path):
    path = tmp_path / MODEL_FILENAME
    header = b"[" * 100_000 + b"]" * 100_000
    path.write_bytes(len(header).to_bytes(8, "little") + header)
    with pytest.raises(ModelFileError, match=f"^{path} is not a readable mtrec model \\(truncated or corrupt\\): nested too deeply$"):
        read_model_file(path)
    assert model_digest(path) is None
