"""world_alignment's object persistence: the share of frames that show every prompted object, against
rendered videos, merges of two objects, and planted vanishing, blinking and blank videos."""
import numpy as np
import pytest

from harness.world.grammar import Scene, parse
from harness.world.render import BACKGROUND, render, render_tracks, tracks
from harness.engine.metric import VideoBatch
from metrics.world_alignment import WorldAlignment


def u8(video: np.ndarray) -> np.ndarray:
    return np.round(np.clip(video, 0.0, 1.0) * 255).astype(np.uint8)


def alignment(videos: np.ndarray, prompts: list[str]) -> dict[str, np.ndarray]:
    return WorldAlignment().score(VideoBatch(videos, [{"prompt": p, "seed": 0} for p in prompts]))


def test_rendered_videos_keep_every_object_in_view_through_merges() -> None:
    """Ground truth persists in every frame, also where two objects of one colour cross and merge into
    one detection (seeds where the oracle reads a single blob for some frames)."""
    prompt = "a red circle and a red square bouncing"
    videos = np.stack([u8(render(parse(prompt), seed)) for seed in range(10)])
    got = alignment(videos, [prompt] * 10)
    assert np.all(got["persistence"] == 1.0) and np.all(got["persistent"] == 1.0)


@pytest.mark.parametrize("prompt", ["a blue square and a yellow triangle moving left",
                                    "a green circle and a purple triangle falling"])
def test_a_planted_vanishing_object_is_read_as_missing_from_that_frame_on(prompt: str) -> None:
    """One of two objects disappears from frame 12 (the other, untouched, goes on), one blinks out for a
    single frame, the whole video goes blank: persistence is the share of frames showing both."""
    scene = parse(prompt)
    paths = tracks(scene, 3, 21, 32)
    whole = render_tracks(scene, paths, 32)
    alone = render_tracks(Scene(scene.objects[:1], scene.motion), paths[:1], 32)
    vanishing = np.concatenate([whole[:12], alone[12:]])
    blinking = np.concatenate([whole[:7], alone[7:8], whole[8:]])
    blank = np.full_like(whole, BACKGROUND)
    got = alignment(np.stack([u8(v) for v in (whole, vanishing, blinking, blank)]), [prompt] * 4)
    assert got["persistence"] == pytest.approx([1.0, 12 / 21, 20 / 21, 0.0])
    assert got["persistent"].tolist() == [1.0, 0.0, 0.0, 0.0]
