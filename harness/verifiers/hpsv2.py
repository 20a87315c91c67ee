"""`hpsv2`: Human Preference Score v2.1 (Wu et al. 2023), the image reward of the AutoRefiner paper's
reward mixture (Table 2; Appendix B: HPSv2.1 with weight 0.1 on 2 random frames).

    score = mean over frames of cos(image embedding, text embedding)

HPSv2.1 is open_clip's ViT-H-14 fine-tuned on human preferences: the architecture comes from open_clip
(random init, nothing downloaded), the weights from `HPS_v2.1_compressed.pt` under `paths.weights`,
read with torch.load(weights_only=True) (a plain dict of tensors; the `hpsv2` package's own loader,
which downloads, is never used). The text goes through open_clip's tokenizer, whose vocabulary ships
with open_clip. Differentiable in the pixels (preprocessing in torch), so it can be trained on.
"""
from __future__ import annotations

from pathlib import Path

import torch

from harness.errors import UsageError
from harness.models.weights import load_tensors
from harness.verifiers.base import Verifier
from harness.verifiers.clip_score import OpenClipFrames, import_open_clip
from harness.engine.metric import WeightFile

HPS_V2_1 = WeightFile("hpsv2/HPS_v2.1_compressed.pt",
                      "https://huggingface.co/xswu/HPSv2 (HPS_v2.1_compressed.pt)")
ARCHITECTURE = "ViT-H-14"


class HpsV2(Verifier):
    name = "hpsv2"
    version = "1"
    description = "HPSv2.1 human preference score (open_clip ViT-H-14), mean over frames"
    differentiable = True
    input = "frames"
    weights = (HPS_V2_1,)

    def __init__(self, weights_dir: Path, architecture: str = ARCHITECTURE):
        """`architecture`: an open_clip model config name (tests use a tiny one of the same kind)."""
        super().__init__(weights_dir)
        path = self.weight_path(HPS_V2_1)
        open_clip = import_open_clip(f"verifier {self.name!r}")
        try:
            checkpoint = load_tensors(path, map_location="cpu")
        except Exception as exc:  # a pickle weights_only refuses, or not a torch file at all
            raise UsageError(f"{path} is not a checkpoint of tensors ({type(exc).__name__}); get "
                             f"HPS_v2.1_compressed.pt again from {HPS_V2_1.origin}") from None
        state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
        model = open_clip.create_model(architecture, pretrained=None, load_weights=False)
        try:
            model.load_state_dict(state)
        except (RuntimeError, TypeError) as exc:
            reason = str(exc).strip().splitlines()[0]
            raise UsageError(f"{path} does not fit open_clip's {architecture} ({reason}); it must be HPSv2.1's "
                             f"checkpoint from {HPS_V2_1.origin}") from None
        self.clip = OpenClipFrames(open_clip, model, architecture)

    def score(self, frames: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return self.clip.cosines(frames, prompts).mean(1)
