"""`clip_score`: frame-level CLIPScore (Hessel et al. 2021) with open_clip's ViT-B-32 (OpenAI weights),
the interface a real reward model plugs into (AutoRefiner's reward mixture uses CLIPScore).

    score = mean over frames of 2.5 * max(cos(image embedding, text embedding), 0)

The weights come from a local file under `paths.weights`; nothing downloads at run time. open_clip is
imported only when the verifier is built, after the weights file is found.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from harness.errors import UsageError
from harness.verifiers.base import Verifier
from harness.engine.metric import WeightFile

VIT_B_32 = WeightFile(
    "open_clip/ViT-B-32-openai.safetensors",
    "https://huggingface.co/timm/vit_base_patch32_clip_224.openai (open_clip_model.safetensors, saved under this name)",
)
# OpenAI's CLIP uses QuickGELU; open_clip applies it from a pretrained tag, not from a file path
MODEL_NAME = "ViT-B-32-quickgelu"
CLIP_SCORE_WEIGHT = 2.5  # Hessel et al.'s w


def import_open_clip(owner: str = "verifier 'clip_score'") -> Any:
    try:
        import open_clip
    except ImportError:
        raise UsageError(f"{owner} needs open_clip, which is not installed; run `pip install open_clip_torch`") from None
    return open_clip


def frame_cosines(encode_image: Callable[[torch.Tensor], torch.Tensor], text: torch.Tensor,
                  frames: torch.Tensor, size: int, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Cosine similarity (N, F) of every frame's image embedding with its row's text embedding.

    frames (N, F, 3, H, W) in [0, 1]; text (N, D). Preprocessing is done in torch (resize, normalise),
    not with open_clip's PIL transforms, so the score stays differentiable in the pixels."""
    n, f = frames.shape[:2]
    images = F.interpolate(frames.flatten(0, 1).float(), size=(size, size), mode="bicubic", align_corners=False)
    images = (images.clamp(0, 1) - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    image = F.normalize(encode_image(images), dim=-1).view(n, f, -1)
    return (image * F.normalize(text, dim=-1)[:, None]).sum(-1)


class OpenClipFrames:
    """An open_clip model that embeds video frames and prompts: what CLIPScore and HPSv2 share."""

    def __init__(self, open_clip: Any, model: torch.nn.Module, architecture: str):
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = open_clip.get_tokenizer(architecture)
        size = model.visual.image_size
        self.size = size if isinstance(size, int) else size[0]
        self.mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN)
        self.std = torch.tensor(open_clip.OPENAI_DATASET_STD)

    def cosines(self, frames: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """(N, F) cosine of every frame with its row's prompt (frame_cosines), on the frames' device."""
        device = frames.device
        model = self.model.to(device)
        text = model.encode_text(self.tokenizer(prompts).to(device))
        return frame_cosines(model.encode_image, text, frames, self.size, self.mean.to(device), self.std.to(device))


class ClipScore(Verifier):
    name = "clip_score"
    version = "1"
    description = "frame-level CLIPScore, open_clip ViT-B-32 with OpenAI weights"
    differentiable = True
    input = "frames"
    weights = (VIT_B_32,)

    def __init__(self, weights_dir: Path):
        super().__init__(weights_dir)
        path = self.weight_path(VIT_B_32)  # a missing file fails here, before open_clip is imported
        open_clip = import_open_clip()
        model, _, _ = open_clip.create_model_and_transforms(MODEL_NAME, pretrained=str(path))
        self.clip = OpenClipFrames(open_clip, model, MODEL_NAME)

    def score(self, frames: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """CLIPScore of every frame against its prompt, averaged over frames."""
        return (CLIP_SCORE_WEIGHT * self.clip.cosines(frames, prompts).clamp(min=0)).mean(1)
