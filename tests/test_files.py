"""harness.store.files: atomic writes leave the old or the new file and no temp file behind; the canonical
JSON and the digests built on it keep their values, so stored cells and shipped weights keep theirs."""
import errno
import os
from pathlib import Path

import pytest

from harness.store.files import (TEMP_NAME, WriteRefused, atomic_folder, atomic_write, atomic_write_text, canonical_json,
                                  sha256_hex, temp_path)
from harness.store.cells import cell_key
from harness.models.weights import safetensors_digest


def test_canonical_json_is_sorted_and_compact():
    assert canonical_json({"b": [1, 2.5], "a": {"y": None, "x": True}}) == '{"a":{"x":true,"y":null},"b":[1,2.5]}'
    with pytest.raises(ValueError):
        canonical_json({"x": float("nan")})


def test_cell_keys_and_shipped_digests_keep_their_values(toy, toy_flow):
    # values from before harness.store.files existed: a change here orphans every stored cell
    assert cell_key({"a": [1, 2.5, "x"], "b": {"z": None, "y": True}}) == "286d821285f16be7"
    assert toy_flow.digest() == "d90625910f19ebb5"  # docs and benchmarks/RESULTS.md quote these
    assert toy.digest() == "4929a9e0aa13191b"
    from harness.train.adapter_files import checkpoint_path
    from harness.verifiers.world_reward import WorldReward
    from harness.world.probe import SHIPPED_WEIGHTS as PROBE

    assert WorldReward().digest() == "8d194067aa2666d7"
    assert safetensors_digest(PROBE) == "d678aa317203e1b2"
    assert safetensors_digest(checkpoint_path("autorefiner", "dmd", "toy_flow")) == "8e3a626fa2b2d6d7"


def test_sha256_hex_of_chunks_is_that_of_their_concatenation():
    assert sha256_hex(["ab", b"c"]) == sha256_hex("abc") == sha256_hex(b"abc")


def test_a_failed_writer_leaves_the_old_file_and_no_temp_file(tmp_path):
    target = tmp_path / "x.txt"
    atomic_write_text(target, "old")

    def killed(tmp):
        tmp.write_text("half")
        raise OSError("killed")

    with pytest.raises(OSError, match="killed"):
        atomic_write(target, killed)
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["x.txt"]


def test_temp_names_are_recognised():
    target = Path("cell/spec.json")
    assert TEMP_NAME.fullmatch(temp_path(target).name) and not TEMP_NAME.fullmatch(target.name)


def test_atomic_folder_appears_whole_or_not_at_all(tmp_path):
    target = tmp_path / "out" / "cell"
    with pytest.raises(RuntimeError):
        with atomic_folder(target) as tmp:
            tmp.mkdir()
            (tmp / "a").write_text("a")
            raise RuntimeError("killed")
    assert os.listdir(tmp_path / "out") == []
    with atomic_folder(target) as tmp:
        tmp.mkdir()
        (tmp / "a").write_text("a")
    assert os.listdir(tmp_path / "out") == ["cell"] and (target / "a").read_text() == "a"


@pytest.mark.parametrize("code, said", [(errno.ENOSPC, "its file system is full (No space left on device); free space"),
                                        (errno.EROFS, "its file system is read-only (Read-only file system); point"),
                                        (errno.EACCES, "its folder is not writable (Permission denied); point")])
def test_a_refused_write_is_one_line_naming_the_file_and_the_fix(tmp_path, code, said):
    target = tmp_path / "x.json"

    def refused(tmp):
        tmp.write_text("half")
        raise OSError(code, os.strerror(code))

    with pytest.raises(WriteRefused) as caught:
        atomic_write(target, refused)
    assert str(caught.value).startswith(f"cannot write {target}: {said}") and "\n" not in str(caught.value)
    assert os.listdir(tmp_path) == []


def test_other_write_errors_pass_through(tmp_path):
    def broken(tmp):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    with pytest.raises(OSError) as caught:
        atomic_write(tmp_path / "x", broken)
    assert caught.value.errno == errno.EIO and not isinstance(caught.value, WriteRefused)
