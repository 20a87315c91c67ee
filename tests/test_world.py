"""The shapes world: grammar, frozen prompt sets, renderer."""
import numpy as np
import pytest

from harness.errors import UsageError
from harness.world.grammar import COLOURS, MOTIONS, SHAPES, all_scenes, parse
from harness.world.prompts import eval_prompts, split_scenes, train_prompts
from harness.world.render import BACKGROUND, render


def test_every_scene_round_trips_through_its_prompt():
    scenes = all_scenes()
    assert len(scenes) == len(MOTIONS) * (15 + 15 * 14 // 2)
    assert all(parse(s.text) == s for s in scenes)
    assert len(COLOURS) >= 5 and len(SHAPES) >= 3


def test_words_outside_the_vocabulary_are_named():
    with pytest.raises(UsageError, match="dragon, flying"):
        parse("a red dragon flying")


@pytest.mark.parametrize("prompt", ["a red circle", "red circle bouncing", "a red circle and bouncing",
                                    "a red circle and a blue square and a green triangle bouncing", ""])
def test_malformed_prompts_are_refused(prompt):
    with pytest.raises(UsageError, match="grammar"):
        parse(prompt)


def test_frozen_sets_match_the_seeded_split_and_are_disjoint():
    train, held = split_scenes()
    assert train_prompts() == [s.text for s in train]
    assert [p.text for p in eval_prompts()] == [s.text for s in held]
    assert not set(train_prompts()) & {p.text for p in eval_prompts()}
    for p in eval_prompts():
        n = len(parse(p.text).objects)
        assert {"colour", "shape", "motion"} <= set(p.tags) and ("count" in p.tags) == (n == 2)


def test_render_is_deterministic_per_seed_and_in_range():
    scene = parse("a blue square and a yellow triangle bouncing")
    a, b, c = render(scene, 1), render(scene, 1), render(scene, 2)
    assert a.shape == (21, 32, 32, 3) and a.dtype == np.float32
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert a.min() >= 0 and a.max() <= 1
    assert np.allclose(a[:, 0, 0], BACKGROUND)  # a plain background


def test_still_objects_do_not_move_and_moving_ones_do():
    still = render(parse("a red circle standing still"), 0)
    moving = render(parse("a red circle moving right"), 0)
    assert np.array_equal(still[0], still[-1])
    assert not np.array_equal(moving[0], moving[-1])
