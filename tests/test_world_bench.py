"""world_bench: VBench's aggregation by hand, known answers on rendered and degraded videos, the
not-applicable rule through the store and the report, and bad input."""
from __future__ import annotations

import numpy as np
import pytest
from omegaconf import OmegaConf
from scipy.ndimage import gaussian_filter

from harness.errors import UsageError
from harness.engine.registry import METRICS
from harness.store.cells import CellRef
from harness.report.tables import collect, summarize
from harness.store.cells import Store
from harness.world.grammar import COLOURS, Scene, WorldObject, parse
from harness.world.prompts import eval_prompts
from harness.world.render import BACKGROUND, GRAVITY, Track, render, render_tracks
from harness.engine.metric import VideoBatch
from metrics.world_bench import DIMENSIONS, GROUPS, WorldBench, aggregate, score_video

QUALITY = [n for n, d in DIMENSIONS.items() if d.group == "quality"]
SEMANTIC = [n for n, d in DIMENSIONS.items() if d.group == "semantic"]
ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent


def u8(video: np.ndarray) -> np.ndarray:
    return np.round(np.clip(video, 0.0, 1.0) * 255).astype(np.uint8)


def bench(videos: np.ndarray, prompts: list[str]) -> dict[str, np.ndarray]:
    return WorldBench().score(VideoBatch(videos, [{"prompt": p, "seed": 0} for p in prompts]))


@pytest.fixture(scope="module")
def rendered() -> tuple[np.ndarray, list[str], dict[str, np.ndarray]]:
    """Every evaluation prompt, seed 0, rendered (the ground truth), and its scores."""
    prompts = [p.text for p in eval_prompts()]
    videos = np.stack([u8(render(parse(p), 0)) for p in prompts])
    return videos, prompts, bench(videos, prompts)


def test_vbench_aggregation_by_hand() -> None:
    values = {"subject_consistency": 0.95, "background_consistency": 0.96, "temporal_flickering": 0.97,
              "motion_smoothness": 0.98, "dynamic_degree": 0.5, "imaging_quality": 0.6,
              "object_class": 0.8, "multiple_objects": 0.5, "colour": 0.7, "motion_direction": 0.9,
              "physics": 0.4}
    # VBench's NORMALIZE_DIC and DIM_WEIGHT (dynamic degree 0.5), by hand; VBench divides by its
    # groups' weight sums, here 5.5 (its 6.5 less aesthetic quality) and 5
    quality = ((0.95 - 0.1462) / (1.0 - 0.1462) + (0.96 - 0.2615) / (1.0 - 0.2615)
               + (0.97 - 0.6293) / (1.0 - 0.6293) + (0.98 - 0.706) / (0.9975 - 0.706)
               + 0.5 * 0.5 + 0.6) / 5.5
    semantic = (0.8 + 0.5 + 0.7 + 0.9 + 0.4) / 5
    got = aggregate(values)
    assert got["quality"] == pytest.approx(quality, abs=1e-12)
    assert got["semantic"] == pytest.approx(semantic, abs=1e-12)
    assert got["total"] == pytest.approx((4 * quality + semantic) / 5, abs=1e-12)


def test_mean_of_per_video_totals_is_vbench_total_of_means_when_all_apply() -> None:
    rng = np.random.default_rng(0)
    values = {n: rng.uniform(0.2, 1.0, size=7) for n in DIMENSIONS}
    per_video = aggregate(values)
    of_means = aggregate({n: v.mean() for n, v in values.items()})
    for group in GROUPS:
        assert per_video[group].mean() == pytest.approx(float(of_means[group]), abs=1e-12)


def test_not_applicable_dimension_leaves_its_group_average() -> None:
    values = {n: np.array([0.9, 0.9]) for n in DIMENSIONS}
    values["physics"] = np.array([np.nan, 0.0])
    semantic = aggregate(values)["semantic"]
    assert semantic[0] == pytest.approx(0.9)  # mean of the four that apply
    assert semantic[1] == pytest.approx((4 * 0.9 + 0.0) / 5)


def test_rendered_eval_videos_score_high_and_every_semantic_one(rendered) -> None:
    _, prompts, scores = rendered
    for name in SEMANTIC:
        applicable = scores[name][~np.isnan(scores[name])]
        assert applicable.size > 0 and np.all(applicable == 1.0), name
    for name in QUALITY:
        applicable = scores[name][~np.isnan(scores[name])]
        assert applicable.min() >= 0.85 and applicable.mean() >= 0.9, (name, applicable.min())
    assert scores["semantic"] == pytest.approx(np.ones(len(prompts)))
    assert scores["total"].mean() >= 0.95


def test_prompt_subsets_are_nan_exactly_where_the_prompt_does_not_test(rendered) -> None:
    _, prompts, scores = rendered
    scenes = [parse(p) for p in prompts]
    np.testing.assert_array_equal(np.isnan(scores["multiple_objects"]), [len(s.objects) == 1 for s in scenes])
    np.testing.assert_array_equal(np.isnan(scores["physics"]),
                                  [s.motion not in ("bouncing", "falling") for s in scenes])
    np.testing.assert_array_equal(np.isnan(scores["dynamic_degree"]), [s.motion == "still" for s in scenes])
    for name in (*DIMENSIONS, *GROUPS):
        if name not in ("multiple_objects", "physics", "dynamic_degree"):
            assert not np.isnan(scores[name]).any(), name


def test_identical_frames_are_static_and_flicker_free() -> None:
    frame = u8(render(parse("a blue square moving right"), 3))[5]
    still = np.repeat(frame[None], 21, axis=0)[None]
    scores = bench(still, ["a blue square moving right"])
    assert scores["dynamic_degree"][0] == 0.0
    assert scores["temporal_flickering"][0] == 1.0
    assert scores["background_consistency"][0] == 1.0
    assert scores["subject_consistency"][0] == pytest.approx(1.0)
    assert scores["motion_smoothness"][0] == 1.0
    assert scores["motion_direction"][0] == 0.0  # asked to move right, it stands still


def test_frozen_video_fails_motion_direction_and_physics(rendered) -> None:
    videos, prompts, scores = rendered
    moving = [i for i, p in enumerate(prompts) if parse(p).motion != "still"]
    frozen = np.repeat(videos[moving, :1], videos.shape[1], axis=1)
    got = bench(frozen, [prompts[i] for i in moving])
    assert np.all(got["motion_direction"] == 0.0)
    assert np.all(got["dynamic_degree"] == 0.0)
    physical = ~np.isnan(got["physics"])
    assert physical.any() and np.all(got["physics"][physical] == 0.0)
    assert np.all(got["total"] < scores["total"][moving])


def test_shuffled_frames_hurt_motion_smoothness(rendered) -> None:
    videos, prompts, scores = rendered
    rng = np.random.default_rng(1)
    moving = [i for i, p in enumerate(prompts) if parse(p).motion != "still"]
    shuffled = np.stack([videos[i][rng.permutation(videos.shape[1])] for i in moving])
    got = bench(shuffled, [prompts[i] for i in moving])
    assert np.all(got["motion_smoothness"] < scores["motion_smoothness"][moving] - 0.02)
    assert got["motion_smoothness"].mean() < 0.95 < scores["motion_smoothness"][moving].mean()


def test_wrong_colour_fails_colour_only(rendered) -> None:
    _, prompts, _ = rendered
    names = list(COLOURS)
    texts, videos = [], []
    for p in prompts[::3]:
        scene = parse(p)
        shifted = tuple(WorldObject(names[(names.index(o.colour) + 2) % len(names)], o.shape)
                        for o in scene.objects)
        texts.append(p)
        videos.append(u8(render(Scene(shifted, scene.motion), 0)))
    got = bench(np.stack(videos), texts)
    assert np.all(got["colour"] == 0.0)
    two = ~np.isnan(got["multiple_objects"])
    assert two.any() and np.all(got["multiple_objects"][two] == 0.0)
    for name in ("object_class", "motion_direction"):
        assert np.all(got[name] == 1.0), name


def test_noise_and_blur_lower_what_they_should(rendered) -> None:
    videos, prompts, scores = rendered
    pick = slice(0, None, 4)
    rng = np.random.default_rng(2)
    clean = videos[pick]
    noisy = np.clip(clean + rng.normal(0, 0.05 * 255, clean.shape), 0, 255).round().astype(np.uint8)
    blurred = gaussian_filter(clean.astype(np.float64), sigma=(0, 0, 1.0, 1.0, 0)).round().astype(np.uint8)
    texts = prompts[pick]
    got_noisy, got_blur = bench(noisy, texts), bench(blurred, texts)
    for name in ("imaging_quality", "temporal_flickering", "background_consistency", "subject_consistency"):
        assert np.all(got_noisy[name] < scores[name][pick]), name
    assert np.all(got_blur["imaging_quality"] < scores["imaging_quality"][pick] - 0.1)
    assert np.all(got_noisy["imaging_quality"] < 0.6)
    assert np.all(got_blur["semantic"] == 1.0)  # the oracle still reads a mildly blurred video


def test_fading_object_loses_subject_consistency() -> None:
    """An object whose contrast scales by a[t] has patches a[t] P, so the similarity of frames t and
    u is 2 a[t] a[u] / (a[t]^2 + a[u]^2); VBench's pairing averages it against the previous and the
    first frame."""
    video = render(parse("a yellow circle moving left"), 0)
    a = np.linspace(1.0, 0.55, len(video))
    faded = BACKGROUND + (video - BACKGROUND) * a[:, None, None, None]
    got = bench(np.stack([u8(video), u8(faded)]), ["a yellow circle moving left"] * 2)

    def sim(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return 2 * x * y / (x * x + y * y)

    expected = ((sim(a[1:], a[:-1]) + sim(a[1:], a[0])) / 2).mean() * got["subject_consistency"][0]
    assert got["subject_consistency"][1] == pytest.approx(expected, abs=0.01)
    assert got["subject_consistency"][1] < got["subject_consistency"][0] - 0.02


def _one_track(prompt: str, centres: np.ndarray, radius: float = 4.0) -> np.ndarray:
    scene = parse(prompt)
    return u8(render_tracks(scene, [Track(centres.astype(np.float32), radius)], 32))


@pytest.mark.parametrize("gravity, obeys", [(GRAVITY, 1.0), (2 * GRAVITY, 0.0), (0.5 * GRAVITY, 0.0)])
def test_falling_physics_is_the_worlds_gravity(gravity: float, obeys: float) -> None:
    t = np.arange(21.0)
    y = np.minimum(6.0 + 0.5 * gravity * np.clip(t - 1, 0, None) ** 2, 27.5)
    video = _one_track("a red square falling", np.stack([np.full(21, 16.0), y], axis=1))
    assert score_video(video, parse("a red square falling"))["physics"] == obeys


def test_bounce_must_turn_at_a_wall() -> None:
    t = np.arange(21.0)
    wall = 32 - 4.0 - 0.5
    x = 8.0 + 1.6 * t
    at_wall = np.stack([np.where(x > wall, 2 * wall - x, x), 16 - 0.5 * t], axis=1)
    mid_air = np.stack([np.where(x > 18, 36 - x, x), 16 - 0.5 * t], axis=1)  # turns back at x = 18
    prompt = "a green circle bouncing"
    assert score_video(_one_track(prompt, at_wall), parse(prompt))["physics"] == 1.0
    assert score_video(_one_track(prompt, mid_air), parse(prompt))["physics"] == 0.0


def test_nan_means_not_applicable_through_store_and_report(tmp_path, rendered) -> None:
    videos, prompts, _ = rendered
    metric = WorldBench()
    metric.update(VideoBatch(videos[:6], [{"prompt": p, "seed": 0} for p in prompts[:6]]))
    values = metric.compute()
    cell = Store(tmp_path / "store").cell("c")
    cell.write_spec({"suite": "s", "seeds": [0]})
    for i in range(6):
        cell.write_video(i, videos[i], {"prompt": prompts[i], "seed": 0})
    cell.write_scores("world_bench", {"metric": "world_bench", "version": metric.version,
                                      "higher_is_better": dict(metric.higher_is_better),
                                      "values": {k: v.tolist() for k, v in values.items()}, "videos": 6})
    cell.set_status("complete")
    summary = summarize(collect(Store(tmp_path / "store"), [CellRef("c")])).set_index("metric")
    two = [len(parse(p).objects) == 2 for p in prompts[:6]]
    row = summary.loc["world_bench.multiple_objects"]
    assert 0 < sum(two) < 6 and row["n"] == sum(two)  # the mean is over its own prompt subset
    assert row["mean"] == pytest.approx(values["multiple_objects"][two].mean())
    assert summary.loc["world_bench.total", "n"] == 6


def test_outputs_table_and_registration() -> None:
    assert METRICS.get("world_bench") is WorldBench
    assert "world_bench" in OmegaConf.load(ROOT / "sweeps" / "metric" / "default.yaml")
    assert set(WorldBench.higher_is_better) == {*DIMENSIONS, *GROUPS}
    for name, d in DIMENSIONS.items():
        assert d.group in ("quality", "semantic") and "\n" not in d.definition, name
        assert d.low < d.high and d.weight > 0, name


def test_bad_input_is_a_usage_error(rendered) -> None:
    videos, _, _ = rendered
    with pytest.raises(UsageError, match="vocabulary"):
        bench(videos[:1], ["a red car driving"])
    with pytest.raises(UsageError, match="grammar"):
        bench(videos[:1], ["a red circle"])
    with pytest.raises(UsageError, match="prompt"):
        WorldBench().score(VideoBatch(videos[:1], [{"seed": 0}]))
    with pytest.raises(UsageError, match="3 frames"):
        bench(videos[:1, :2], ["a red circle bouncing"])
    with pytest.raises(UsageError, match="uint8"):
        bench(videos[:1].astype(np.float32), ["a red circle bouncing"])
    with pytest.raises(UsageError, match="no options"):
        WorldBench(interval=5)

