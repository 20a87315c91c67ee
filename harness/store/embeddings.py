"""Prompt embeddings kept in the store, so a suite's prompts are encoded once per text encoder.

    embeddings/<encoder>/<sha256 of the text>.safetensors   one text's tensors; the text in its metadata

`<encoder>` is the backend's key of its text encoder (harness.models.base.VideoModel.encode_suite):
the digest of its weights and tokenizer and whatever else changes the bits of an embedding (dtype,
device, CPU threads), so weights that change, or another precision, never read another's files.
Files are written atomically (harness.store.files); an unreadable one counts as absent and is
written again.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from harness.store.files import atomic_write_bytes, sha256_hex

if TYPE_CHECKING:
    import torch

FOLDER = "embeddings"


class PromptEmbeddings:
    """The embedding files of one store (harness.models.base.EmbeddingStore)."""

    def __init__(self, store_root: str | Path):
        self.root = Path(store_root) / FOLDER

    def path(self, encoder: str, text: str) -> Path:
        return self.root / encoder / f"{sha256_hex(text)[:32]}.safetensors"

    def get(self, encoder: str, text: str) -> dict[str, torch.Tensor] | None:
        from safetensors import SafetensorError, safe_open

        path = self.path(encoder, text)
        try:
            with safe_open(str(path), framework="pt") as f:
                if (f.metadata() or {}).get("text") != text:
                    return None  # a hash collision, or a foreign file: encode again
                return {name: f.get_tensor(name) for name in f.keys()}
        except (FileNotFoundError, SafetensorError, OSError):
            return None

    def put(self, encoder: str, text: str, tensors: dict[str, torch.Tensor]) -> None:
        from safetensors.torch import save

        data = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata={"text": text})
        atomic_write_bytes(self.path(encoder, text), data)
