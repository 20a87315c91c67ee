"""Bad input: one line naming the problem and the fix, exit code 2, nothing written to the store."""
import pytest

from conftest import FAST, fast_with
from conftest import refinery_here as refinery

pytestmark = pytest.mark.slow  # every test runs `refinery` (in this process)


CASES = {
    "unknown method": (["method=bse"], "did you mean 'base'"),
    "unknown model": (["model=tyo"], "did you mean 'toy'"),
    "unknown suite": (["suite=world_evl"], "did you mean 'world_eval'"),
    "unknown metric": (["+metric.dinamics={}"], "did you mean 'dynamics'"),
    "unknown key": (["sampler.stepz=3"], "sampler.stepz"),
    "steps < 1": (["sampler.steps=0"], "sampler.steps=0 is out of range"),
    "negative seed": (["seed=-1"], "seed=-1 is out of range"),
    "unknown sampler kind": (["sampler.kind=sde"], "unknown sampler.kind"),
    "out-of-vocabulary prompt": (["suite=world_smoke", "suite.prompts=[a red dragon flying]"],
                                 "dragon, flying"),
    "missing checkpoint": (["model.checkpoint=/nonexistent/toy.safetensors"], "is missing"),
    "unknown method parameter": (["+method.params.tau=0.3"], "method.params.tau is not an option"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(name, tmp_path):
    overrides, expected = CASES[name]
    store = tmp_path / "store"
    result = refinery("run", *fast_with(overrides), f"paths.store={store}")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("refinery: error:"), result.stderr
    assert expected in lines[0]
    assert not store.exists()


def test_corrupt_checkpoint(tmp_path):
    bad = tmp_path / "toy.safetensors"
    bad.write_bytes(b"garbage" * 10)
    result = refinery("run", *FAST, f"model.checkpoint={bad}", f"paths.store={tmp_path / 'store'}")
    assert result.returncode == 2 and "corrupt" in result.stderr and len(result.stderr.splitlines()) == 1


def test_unwritable_store(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    result = refinery("run", *FAST, f"paths.store={blocker / 'store'}")
    assert result.returncode == 2 and "a plain file, not a folder" in result.stderr
    assert len(result.stderr.splitlines()) == 1


def test_unknown_command_and_sweep_preflight(tmp_path):
    result = refinery("rnu")
    assert result.returncode == 2 and "did you mean 'run'" in result.stderr
    # a sweep refuses before launching any cell when one of its cells is invalid
    fast = [o for o in FAST if not o.startswith("sampler.steps")]
    result = refinery("sweep", *fast, "sampler.steps=2,0", f"paths.store={tmp_path / 'store'}")
    assert result.returncode == 2 and "out of range" in result.stderr
    assert not (tmp_path / "store").exists()


def test_weights_check_lists_every_file_and_fails_while_one_is_missing(tmp_path):
    shipped = refinery("weights", "check", "method=bon", f"paths.weights={tmp_path}")
    assert shipped.returncode == 0, shipped.stderr
    assert [line.split()[:3] for line in shipped.stdout.splitlines()] == [
        ["ok", "model", "toy_sf"], ["ok", "verifier", "world_reward"]]
    external = refinery("weights", "check", "method=bon", "method.params.verifier=clip_score", f"paths.weights={tmp_path}")
    assert external.returncode == 2
    missing = [line for line in external.stdout.splitlines() if line.startswith("MISSING")]
    assert len(missing) == 1 and f"{tmp_path}/open_clip/ViT-B-32-openai.safetensors" in missing[0]
    assert "huggingface.co" in missing[0]  # where it comes from
    assert external.stderr.count("\n") == 1 and "1 of 2 weight files are missing" in external.stderr
