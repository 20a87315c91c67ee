"""The umT5 text encoder (transformers' `UMT5EncoderModel`) and its tokenizer, as Wan uses them.

Prompts are cleaned as Self-Forcing's tokenizer cleans them (HTML entities unescaped, runs of
whitespace collapsed), tokenized to `max_length` tokens with padding, encoded, and the embeddings
past each prompt's length set to zero ([B, 512, 4096] at full size, diffusers' WanPipeline and
Self-Forcing agree). Upstream truncates a longer prompt silently; here it is refused before any
compute (`check_prompts`), since a truncated prompt is not the prompt the results are filed under.
"""
from __future__ import annotations

import html
import re

import torch
from torch import nn

from harness.errors import UsageError


def clean_prompt(text: str) -> str:
    return re.sub(r"\s+", " ", html.unescape(html.unescape(text))).strip()


class WanTextEncoder:
    def __init__(self, encoder: nn.Module, tokenizer, max_length: int):
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.max_length = max_length

    def token_counts(self, prompts: list[str]) -> list[int]:
        ids = self.tokenizer([clean_prompt(p) for p in prompts], add_special_tokens=True)["input_ids"]
        return [len(row) for row in ids]

    def check_prompts(self, prompts: list[str]) -> None:
        """Refuse a prompt the encoder cannot take whole."""
        for prompt, count in zip(prompts, self.token_counts(prompts)):
            if count > self.max_length:
                shown = prompt if len(prompt) <= 60 else prompt[:57] + "..."
                raise UsageError(f"prompt {shown!r} is {count} tokens long, more than the text encoder's "
                                 f"{self.max_length}; shorten it")

    @torch.no_grad()
    def __call__(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(embeddings (B, max_length, dim), mask (B, max_length))."""
        device = next(self.encoder.parameters()).device
        batch = self.tokenizer([clean_prompt(p) for p in prompts], padding="max_length", truncation=True,
                               max_length=self.max_length, add_special_tokens=True, return_tensors="pt")
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        states = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        return states * mask[..., None].to(states.dtype), mask.bool()


def byte_tokenizer(max_length: int):
    """An offline tokenizer for the tiny test size: one token per UTF-8 byte (any prompt), pad 0,
    end-of-sequence 1, as umT5's ids place them; a PreTrainedTokenizerFast, so it saves and loads
    from a folder exactly like the real one."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{ch: i + 3 for i, ch in enumerate(sorted(alphabet))}}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=max_length)
