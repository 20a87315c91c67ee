"""The weight files a composed run reads (`refinery weights check`, and the refusal before a run):
its model's, its method's verifier and trained checkpoint, its metrics'."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from harness.engine.registry import METRICS, MODELS, VERIFIERS
from harness.models.weights import WeightFile
from harness.train.adapter_files import checkpoint_path, how_to_train


@dataclass(frozen=True)
class NeededFile:
    owner: str  # "model toy", "verifier world_reward", "metric dino_diversity"
    path: Path
    origin: str

    @property
    def present(self) -> bool:
        return self.path.is_file()


def needed_files(cfg: DictConfig) -> list[NeededFile]:
    """Every weight file the composed run reads: its model, its method's verifier or trained
    checkpoint, its metrics."""
    weights_dir = Path(cfg.paths.weights)
    owners = [(f"model {cfg.model.name}", MODELS.get(cfg.model.backend).weight_files(
        OmegaConf.to_container(cfg.model, resolve=True), weights_dir))]
    params = cfg.method.get("params") or {}
    if params.get("verifier"):
        owners.append((f"verifier {params.verifier}", VERIFIERS.get(params.verifier).weights))
    if params.get("checkpoint"):  # a trained method's adapter
        path = checkpoint_path(cfg.method.name, str(params.checkpoint), cfg.model.name)
        owners.append((f"method {cfg.method.name}", (WeightFile(str(path.resolve()), how_to_train(
            cfg.method.name, str(params.checkpoint), cfg.model.name)),)))
    for name, options in cfg.metric.items():
        options = OmegaConf.to_container(options) if options is not None else {}
        owners.append((f"metric {name}", METRICS.get(name).required_weights(options)))
    return [NeededFile(owner, weights_dir / w.relative_path, w.origin) for owner, files in owners for w in files]
