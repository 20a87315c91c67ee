"""The timing pass: method and baseline interleaved in one process through the one rollout, on the
same videos, warm-up excluded, medians; stored with when and where; read back only against its baseline."""
import statistics

import pytest

import harness.engine.rollout
from conftest import fast_with
from harness.experiment.plans import compose
from harness.errors import UsageError
from harness.experiment.pipeline import resolve_run
from harness.report.timing import Timing, read_timings, time_against, write_timing


@pytest.fixture(scope="module")
def runs():
    return {name: resolve_run(compose(fast_with(extra)))
            for name, extra in {"base": [], "steps3": ["sampler.steps=3"],
                                "other_seeds": ["seed=5"]}.items()}


def test_method_and_baseline_alternate_on_the_same_videos(runs, monkeypatch):
    calls = []
    real = harness.engine.rollout.rollout

    def recording(model, method, prompts, seeds, sampler, *args, **kwargs):
        calls.append((sampler.steps, tuple(prompts), tuple(seeds)))
        return real(model, method, prompts, seeds, sampler, *args, **kwargs)

    monkeypatch.setattr(harness.engine.rollout, "rollout", recording)
    timing = time_against(runs["steps3"], runs["base"], batch=3, repeats=4, warmup=1)
    # warm-up M B, then M B | B M | M B | B M: drift of the machine weighs on both alike
    assert [steps for steps, _, _ in calls] == [3, 2, 3, 2, 2, 3, 3, 2, 2, 3]
    assert len({call[1:] for call in calls}) == 1 and len(calls[0][1]) == 3  # the same 3 videos
    assert len(timing.seconds) == len(timing.base_seconds) == 4  # the warm-up is not counted
    base = runs["base"]
    frames_per_video = real(base.model, base.method, ["a red circle bouncing"], [0], base.sampler).videos.shape[1]
    assert timing.frames == 3 * frames_per_video
    assert timing.ratio == pytest.approx(statistics.median(b / m for m, b in zip(timing.seconds, timing.base_seconds)))
    assert timing.ratio_low <= timing.ratio <= timing.ratio_high
    assert timing.fps == pytest.approx(timing.frames / statistics.median(timing.seconds))
    assert timing.cell == runs["steps3"].key and timing.baseline == runs["base"].key
    assert timing.host and timing.cpu and timing.threads >= 1 and timing.taken.endswith("+00:00")
    assert len(timing.cpu_seconds) == 4 and all(c > 0 for c in timing.cpu_seconds + timing.base_cpu_seconds)
    assert timing.cpu_ratio == pytest.approx(
        statistics.median(b / m for m, b in zip(timing.cpu_seconds, timing.base_cpu_seconds)))
    assert timing.cores >= 1 and timing.loaded == (max(timing.load) > timing.cores)


def test_cells_of_other_inputs_are_not_timed_against_each_other(runs):
    with pytest.raises(UsageError, match="other prompts or seeds"):
        time_against(runs["other_seeds"], runs["base"], batch=2, repeats=1, warmup=0)
    with pytest.raises(UsageError, match="repeats >= 1"):
        time_against(runs["steps3"], runs["base"], repeats=0)


def test_timings_are_stored_and_read_back_against_their_own_baseline(tmp_path):
    timing = Timing("cell1", "base1", 4, 1, 2, 40, [1.0, 2.0], [0.5, 0.5], "2026-12-01T00:00:00+00:00",
                    "h", "cpu", 2, "CPU", "2.14", [0.0, 0.0], 2, [2.0, 4.0], [1.0, 1.0])
    write_timing(tmp_path / "a", timing)
    assert read_timings([tmp_path / "b", tmp_path / "a"], "base1", ["cell1", "cell2"]) == {"cell1": timing}
    assert read_timings([tmp_path / "a"], "another_base", ["cell1"]) == {}  # not comparable
    (tmp_path / "a" / "timings" / "cell1.json").write_text('{"cell": "cell1"}')
    with pytest.raises(UsageError, match="not a timing file"):
        read_timings([tmp_path / "a"], "base1", ["cell1"])
