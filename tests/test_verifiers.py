"""Verifiers: the learned world reward (ranking accuracy on held-out prompts, gradients, determinism,
loading) and the CLIPScore interface (offline errors, scoring math with a stand-in model)."""
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.errors import UsageError
from harness.verifiers.clip_score import CLIP_SCORE_WEIGHT, ClipScore
from harness.verifiers.train_reward import EVAL_SEED, pairwise_accuracy, render_clip, train_world_reward
from harness.verifiers.world_reward import SHIPPED_WEIGHTS, WorldReward, load_reward_net
from harness.world.grammar import parse
from harness.world.prompts import eval_prompts, train_prompts

PROMPT = "a blue square and a yellow triangle moving left"




@pytest.fixture(scope="module")
def reward():
    return WorldReward()


def clip(prompt: str = PROMPT, frames: int = 21) -> torch.Tensor:
    """A rendered video (1, F, 3, 32, 32) in [0, 1]."""
    return render_clip(parse(prompt), EVAL_SEED, slice(0, frames))[None].float() / 255


@pytest.mark.slow
def test_renders_outrank_their_corruptions_on_held_out_prompts(reward):
    accuracy = pairwise_accuracy(reward, [p.text for p in eval_prompts()], [EVAL_SEED])
    assert accuracy["video"] >= 0.8, accuracy
    assert accuracy["chunk"] >= 0.8, accuracy


def test_reward_is_differentiable_in_the_pixels(reward):
    frames = clip(frames=3).requires_grad_(True)
    reward.score(frames, [PROMPT]).sum().backward()
    assert torch.isfinite(frames.grad).all() and frames.grad.abs().sum() > 0
    assert reward.differentiable


def test_reward_is_deterministic_and_batch_independent(reward):
    videos = torch.cat([clip(), clip("a red circle falling")])
    prompts = [PROMPT, "a red circle falling"]
    first, again = reward.score(videos, prompts), reward.score(videos, prompts)
    assert torch.equal(first, again)
    assert torch.allclose(reward.score(videos[1:], prompts[1:]), first[1:], atol=1e-5)


@pytest.mark.parametrize("frames", [1, 3, 21])
def test_reward_takes_any_number_of_frames(reward, frames):
    assert reward.score(clip(frames=frames), [PROMPT]).shape == (1,)


def test_reward_loads_from_the_shipped_file(reward):
    assert reward.path == SHIPPED_WEIGHTS and SHIPPED_WEIGHTS.stat().st_size < 2_000_000
    assert reward.digest() == WorldReward().digest() and len(reward.digest()) == 16


def test_missing_or_corrupt_reward_weights_are_one_line_errors(tmp_path):
    missing = tmp_path / "none.safetensors"
    with pytest.raises(UsageError, match=f"{missing} are missing; .*refinery train-reward"):
        WorldReward(path=missing)
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"not a safetensors file")
    with pytest.raises(UsageError, match=f"{corrupt} are corrupt") as err:
        load_reward_net(corrupt)
    assert "\n" not in str(err.value)


def test_training_writes_a_loadable_reward(tmp_path):
    out = train_world_reward(tmp_path / "r.safetensors", steps=2, seed=0, threads=1, prompts=train_prompts()[:3])
    assert WorldReward(path=out).score(clip(frames=3), [PROMPT]).shape == (1,)


def reordered_header(data: bytes) -> bytes:
    """The same safetensors file with its header's keys (and metadata keys) in reverse order, as
    another process's writer may put them."""
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    header["__metadata__"] = dict(reversed(header["__metadata__"].items()))
    text = json.dumps(dict(reversed(header.items())), separators=(",", ":")).encode()
    text += b" " * (size - len(text))  # keep the data's offset
    return size.to_bytes(8, "little") + text + data[8 + size :]


def test_reward_digest_hashes_content_not_header_order(tmp_path):
    data = SHIPPED_WEIGHTS.read_bytes()
    (tmp_path / "same.safetensors").write_bytes(reordered_header(data))
    (tmp_path / "other.safetensors").write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # one bit of one weight
    same, other = (WorldReward(path=tmp_path / f"{n}.safetensors") for n in ("same", "other"))
    assert (tmp_path / "same.safetensors").read_bytes() != data
    assert same.digest() == WorldReward().digest() != other.digest()


# -- clip_score ----------------------------------------------------------------------------------


class Tripwire(types.ModuleType):
    """Stands in for open_clip where the test must prove it is never used."""

    def __getattr__(self, name):
        raise AssertionError(f"open_clip.{name} was used")


def test_clip_score_without_weights_names_the_file_and_its_origin(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "open_clip", Tripwire("open_clip"))
    with pytest.raises(UsageError, match=f"needs {tmp_path}/open_clip/ViT-B-32-openai.safetensors, which is "
                                         "missing; get it from https://huggingface.co/timm/"):
        ClipScore(tmp_path)


def with_weights_file(folder: Path) -> Path:
    path = folder / "open_clip" / "ViT-B-32-openai.safetensors"
    path.parent.mkdir()
    path.write_bytes(b"stand-in")
    return folder


def test_clip_score_without_open_clip_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "open_clip", None)  # import open_clip raises ImportError
    with pytest.raises(UsageError, match=r"pip install open_clip_torch"):
        ClipScore(with_weights_file(tmp_path))


class TinyClip(torch.nn.Module):
    """A stand-in for open_clip's CLIP: images embed as their mean colour, texts as a fixed vector."""

    class Visual:
        image_size = (8, 8)

    visual = Visual()

    def encode_image(self, images):
        return images.mean(dim=(2, 3))

    def encode_text(self, tokens):
        return tokens.float()


def stand_in_open_clip(loaded: list[str]) -> types.ModuleType:
    """An open_clip module with TinyClip; texts all tokenise to (1, 0, -1), "red minus blue"."""
    def create_model_and_transforms(name, pretrained):
        loaded.append(pretrained)
        return TinyClip(), None, None

    module = types.ModuleType("open_clip")
    module.OPENAI_DATASET_MEAN, module.OPENAI_DATASET_STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    module.create_model_and_transforms = create_model_and_transforms
    module.get_tokenizer = lambda name: lambda prompts: torch.tensor([[1.0, 0.0, -1.0]] * len(prompts))
    return module


def test_clip_score_is_the_mean_frame_clipscore(tmp_path, monkeypatch):
    loaded = []
    monkeypatch.setitem(sys.modules, "open_clip", stand_in_open_clip(loaded))
    verifier = ClipScore(with_weights_file(tmp_path))
    assert loaded == [str(tmp_path / "open_clip" / "ViT-B-32-openai.safetensors")]
    # after normalisation: orange -> (1.6, 0, -1.6), cos 1; grey -> 0, cos 0; azure -> cos -1, clamped to 0
    orange, grey, azure = [0.9, 0.5, 0.1], [0.5, 0.5, 0.5], [0.1, 0.5, 0.9]
    frames = torch.tensor([[orange, grey], [azure, azure]])[..., None, None].expand(-1, -1, -1, 4, 4)
    scores = verifier.score(frames, ["a red circle bouncing", "a blue circle bouncing"])
    assert torch.allclose(scores, torch.tensor([CLIP_SCORE_WEIGHT * (1 + 0) / 2, 0.0]), atol=1e-5)


def test_clip_score_metric_scores_stored_videos_like_the_verifier(tmp_path, monkeypatch):
    from harness.engine.metric import VideoBatch
    from metrics.clip_score import ClipScoreMetric

    monkeypatch.setitem(sys.modules, "open_clip", Tripwire("open_clip"))
    with pytest.raises(UsageError, match="open_clip/ViT-B-32-openai.safetensors"):
        ClipScoreMetric(weights_dir=tmp_path)  # refused before open_clip is touched
    monkeypatch.setitem(sys.modules, "open_clip", stand_in_open_clip([]))
    metric = ClipScoreMetric(weights_dir=with_weights_file(tmp_path))
    orange, azure = [230, 128, 26], [26, 128, 230]
    videos = np.array([[orange, orange], [azure, orange]], dtype=np.uint8)[:, :, None, None].repeat(4, 2).repeat(4, 3)
    metric.update(VideoBatch(videos, [{"prompt": "a red circle bouncing"}] * 2))
    values = metric.compute()["clip_score"]
    frames = torch.from_numpy(videos).permute(0, 1, 4, 2, 3).float() / 255
    expected = ClipScore(tmp_path).score(frames, ["a red circle bouncing"] * 2)
    assert np.allclose(values, expected.numpy(), atol=1e-6) and values[0] > values[1] > 0


def test_reward_metric_is_the_verifier_score_of_each_stored_video(reward):
    from harness.engine.metric import VideoBatch
    from metrics.reward import Reward

    metric = Reward(weights_dir=Path("unused"))
    assert metric.higher_is_better == {"world_reward": True}
    video = render_clip(parse(PROMPT), EVAL_SEED, slice(0, 21)).permute(0, 2, 3, 1).numpy()[None]
    other = "a green square moving up"
    metric.update(VideoBatch(np.concatenate([video, video]), [{"prompt": PROMPT}, {"prompt": other}]))
    values = metric.compute()["world_reward"]
    expected = reward.score(torch.from_numpy(video).permute(0, 1, 4, 2, 3).float().div(255).repeat(2, 1, 1, 1, 1),
                            [PROMPT, other])
    assert np.allclose(values, expected.numpy(), atol=1e-5) and values[0] > values[1]
