"""The rewards of real models, on tiny random-weight backbones: HPSv2.1 loads its checkpoint from a
local file with weights_only and scores differentiably; a video reward plugs in through VideoReward;
the paper's mixture (train=reward_paper) cuts 2 random frames for image rewards and 4-frame clips 10
frames apart for video rewards, and its gradients reach the pixels."""
import json
from types import SimpleNamespace

import pytest
import torch

from harness.experiment.plans import compose
from harness.errors import UsageError
from harness.engine.context import RolloutResult
from harness.engine.ledger import Ledger
from harness.train.objectives import RewardObjective
from harness.verifiers.hpsv2 import HPS_V2_1, HpsV2
from harness.verifiers.video_reward import InternVideo2, VideoReward

TINY_CLIP = {"embed_dim": 16,
             "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
             "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


@pytest.fixture(scope="module")
def tiny_hps(tmp_path_factory):
    """A tiny open_clip model registered under a name, saved as HPSv2's file layout ({'state_dict': ...})."""
    import open_clip

    folder = tmp_path_factory.mktemp("hps")
    (folder / "hps-tiny.json").write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(folder / "hps-tiny.json")
    torch.manual_seed(0)
    model = open_clip.create_model("hps-tiny", pretrained=None)
    weights = folder / "weights"
    (weights / HPS_V2_1.relative_path).parent.mkdir(parents=True)
    torch.save({"state_dict": model.state_dict()}, weights / HPS_V2_1.relative_path)
    return weights, model


def test_hpsv2_is_the_cosine_of_open_clips_embeddings_and_differentiable(tiny_hps):
    weights, reference = tiny_hps
    hps = HpsV2(weights, architecture="hps-tiny")
    frames = torch.rand(2, 3, 3, 32, 32, requires_grad=True)
    prompts = ["a cat", "a red car on a road"]
    score = hps.score(frames, prompts)
    with torch.no_grad():
        import open_clip
        image = reference.encode_image((frames.flatten(0, 1) - torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1))
                                       / torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1))
        text = reference.encode_text(open_clip.get_tokenizer("hps-tiny")(prompts))
        cos = torch.nn.functional.cosine_similarity(image.view(2, 3, -1), text[:, None], dim=-1).mean(1)
    torch.testing.assert_close(score, cos, rtol=0, atol=1e-5)
    score.sum().backward()
    assert frames.grad.abs().sum() > 0


def test_hpsv2_refuses_a_missing_pickled_or_misfit_checkpoint(tmp_path, tiny_hps):
    with pytest.raises(UsageError, match="xswu/HPSv2"):
        HpsV2(tmp_path)
    path = tmp_path / HPS_V2_1.relative_path
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": {"x": object()}}, path)  # a pickled object: weights_only refuses it
    with pytest.raises(UsageError, match="not a checkpoint of tensors"):
        HpsV2(tmp_path, architecture="hps-tiny")
    torch.save({"state_dict": {"x": torch.zeros(1)}}, path)
    with pytest.raises(UsageError, match="does not fit"):
        HpsV2(tmp_path, architecture="hps-tiny")


class TinyVideoReward(VideoReward):
    """A plug-in video reward: a 3D convolution over the clip, its frame count recorded."""

    name = "tiny_video"
    weights = ()
    seen: list[int] = []

    def load(self) -> None:
        torch.manual_seed(0)
        self.net = torch.nn.Conv3d(3, 1, (2, 3, 3))

    def score_clips(self, clips, prompts):
        TinyVideoReward.seen.append(clips.shape[1])
        return self.net(clips.transpose(1, 2)).mean(dim=(1, 2, 3, 4))


def test_internvideo2_names_its_files_and_the_plug_in_point(tmp_path):
    with pytest.raises(UsageError, match="OpenGVLab/InternVideo2-Stage2_1B-224p-f4"):
        InternVideo2(tmp_path)
    for weight in InternVideo2.weights:
        (tmp_path / weight.relative_path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / weight.relative_path).write_bytes(b"")
    with pytest.raises(UsageError, match="VideoReward"):
        InternVideo2(tmp_path)


def test_reward_paper_cuts_frames_and_clips_as_appendix_b_and_gradients_reach_the_pixels(tiny_hps):
    weights, _ = tiny_hps
    cfg = compose(["+train=reward_paper"])
    params = dict(cfg.train.objective.params)
    assert {k: v for k, v in params["verifiers"].items() if v} == {"internvideo2": 0.25, "hpsv2": 0.1, "clip_score": 0.1}
    assert (params["image_frames"], params["clip_frames"], params["clip_interval"]) == (2, 4, 10)
    objective = RewardObjective(verifiers={"hpsv2": 0.1}, image_frames=2, clip_frames=4, clip_interval=10)
    video_reward = TinyVideoReward(weights)
    objective.verifiers = {"hpsv2": (HpsV2(weights, architecture="hps-tiny"), 0.1), "tiny_video": (video_reward, 0.25)}
    videos = torch.rand(2, 81, 3, 32, 32, requires_grad=True)
    gen = torch.Generator().manual_seed(0)
    hps_frames = objective.frames_for(objective.verifiers["hpsv2"][0], videos, gen)
    clips = objective.frames_for(video_reward, videos, gen)
    assert hps_frames.shape[1] == 2 and clips.shape[1] == 4
    # the clip's frames are 10 apart: find each picked frame in its video
    for row in range(2):
        picked = [int((videos[row] == clips[row, k]).flatten(1).all(1).nonzero()) for k in range(4)]
        assert [b - a for a, b in zip(picked, picked[1:])] == [10, 10, 10]
    spec = SimpleNamespace(video_frames=81)
    loss, figures = objective.loss(RolloutResult(videos, torch.zeros(2, 21, 16, 4, 4), Ledger()), ["a", "b"],
                                   objective.draw(spec, 2, gen))
    loss.backward()
    assert videos.grad.abs().sum() > 0 and set(figures) >= {"reward.hpsv2", "reward.tiny_video"}
    assert TinyVideoReward.seen[-1] == 4
