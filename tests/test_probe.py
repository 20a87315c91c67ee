"""The world probe: shipped weights load and read held-out videos; labels, loading errors, training."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from harness.errors import UsageError
from harness.verifiers.train_reward import EVAL_SEED
from harness.world.grammar import Scene, WorldObject, parse
from harness.world.probe import (COUNTS, MOTION_NAMES, OBJECTS, SHIPPED_WEIGHTS, as_frames, load_probe,
                                 scene_labels)
from harness.world.probe_train import held_out_accuracy, render_videos, train_probe
from harness.world.prompts import eval_prompts, train_prompts

# Stated floors for the shipped probe on held-out prompts and seeds; `refinery train-probe`
# prints the measured accuracy on all 42 evaluation prompts x 5 seeds.
CLEAN_FLOOR = {"colour": 0.9, "shape": 0.8, "count": 0.95, "motion": 0.9, "object": 0.75}
DEGRADED_FLOOR = {"colour": 0.85, "shape": 0.6, "count": 0.9, "motion": 0.85, "object": 0.55}


@pytest.fixture(scope="module")
def probe():
    return load_probe()


def test_shipped_weights_are_small_and_load(probe) -> None:
    assert SHIPPED_WEIGHTS.stat().st_size < 2_000_000
    assert not probe.training and not any(p.requires_grad for p in probe.parameters())


def test_shipped_probe_reads_held_out_videos(probe) -> None:
    prompts = [p.text for p in eval_prompts()][::2]  # 21 prompts, every motion, one and two objects
    accuracy = held_out_accuracy(probe, prompts, [EVAL_SEED + 7])
    for kind, floor in (("clean", CLEAN_FLOOR), ("degraded", DEGRADED_FLOOR)):
        for dim, least in floor.items():
            assert accuracy[f"{kind}/{dim}"] >= least, (kind, dim, accuracy)


def test_features_and_layer_maps_have_their_shapes(probe) -> None:
    videos, _ = render_videos(["a red circle bouncing", "a blue square and a green circle falling"], [3], "t")
    uint8 = videos.permute(0, 1, 3, 4, 2).numpy()  # (B, F, H, W, 3), the stored form
    emb = probe.features(uint8)
    assert emb.shape == (2, 21, probe.cfg.embed_dim)
    # layer-normalised without affine: every frame embedding has mean 0 and variance 1
    assert torch.allclose(emb.mean(-1), torch.zeros(2, 21), atol=1e-5)
    maps = probe.layer_features(uint8[0, :4])
    sizes = [32, 16, 8, 4]
    assert [tuple(m.shape) for m in maps] == [(4, w, s, s) for w, s in zip(probe.cfg.widths, sizes)]
    # a frame's embedding does not depend on which other frames share its batch
    assert torch.allclose(probe.features(uint8[:1, 5:6])[0, 0], emb[0, 5], atol=1e-5)


def test_probe_refuses_float_videos(probe) -> None:
    with pytest.raises(UsageError, match="uint8"):
        probe.features(np.zeros((1, 2, 32, 32, 3), dtype=np.float32))
    with pytest.raises(UsageError, match="uint8"):
        as_frames(np.zeros((2, 32, 32, 3), dtype=np.uint8))


def test_scene_labels() -> None:
    scenes = [parse("a red circle moving left"), parse("a blue square and a red circle falling")]
    labels = scene_labels(scenes)
    assert labels.objects.sum(1).tolist() == [1, 2]
    assert labels.objects[1, OBJECTS.index(WorldObject("blue", "square"))] == 1
    assert labels.objects[1, OBJECTS.index(WorldObject("red", "circle"))] == 1
    assert [COUNTS[i] for i in labels.count] == [1, 2]
    assert [MOTION_NAMES[i] for i in labels.motion] == ["left", "falling"]
    assert len(OBJECTS) == len(set(OBJECTS)) == 15


def test_predict_returns_a_judgeable_reading(probe) -> None:
    videos, scenes = render_videos(["a yellow triangle standing still"], [EVAL_SEED], "t")
    reading = probe.predict(videos.permute(0, 1, 3, 4, 2))[0]
    assert reading.count in COUNTS and len(reading.objects) == reading.count
    assert reading.motion in MOTION_NAMES
    assert Scene(tuple(WorldObject(c, s) for c, s in reading.objects), reading.motion).text  # a grammatical scene


def test_missing_or_corrupt_weights_are_usage_errors(tmp_path) -> None:
    with pytest.raises(UsageError, match="missing.*train-probe"):
        load_probe(tmp_path / "absent.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(UsageError, match="corrupt"):
        load_probe(bad)


def test_training_is_deterministic_and_writes_a_loadable_probe(tmp_path) -> None:
    prompts = train_prompts()[:4]
    a = train_probe(tmp_path / "a.safetensors", steps=2, batch=2, video_seeds=1, prompts=prompts)
    b = train_probe(tmp_path / "b.safetensors", steps=2, batch=2, video_seeds=1, prompts=prompts)
    torch.set_num_threads(1)  # train_probe set it; keep the shared machine's budget
    # tensors and metadata, not bytes: safetensors writes the metadata's keys in no fixed order
    state_a, state_b = load_file(str(a)), load_file(str(b))
    assert state_a.keys() == state_b.keys() and all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    with safe_open(str(a), "pt") as fa, safe_open(str(b), "pt") as fb:
        assert fa.metadata() == fb.metadata()
    assert load_probe(a).features(np.zeros((1, 2, 32, 32, 3), np.uint8)).shape[:2] == (1, 2)
