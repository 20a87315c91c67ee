"""Precision and timing that hold on a GPU (issue 23 item 4), checked on the CPU: modules diffusers and
transformers keep in float32 stay float32 when wan_causal loads in bfloat16 or float16, every clock of
the ledger waits for queued CUDA work before it reads the time, and a suite's prompt embeddings are
encoded once and kept in the store under the key of the encoder that made them. The CUDA side of each
runs in benchmarks/gpu_check_precision.py."""
from __future__ import annotations

import shutil

import pytest
import torch

import harness.engine.ledger as ledger_module
from harness.engine.ledger import Ledger
from harness.models.weights import cast_keeping_fp32

TINY = dict(name="wan_tiny", build="tiny", seed=0, architecture="tiny", height=32, width=32, max_prompt_tokens=64,
            num_chunks=2)


def _kept(name: str, keep: list[str]) -> bool:
    return any(part in keep for part in name.split("."))


def test_bf16_keeps_the_modules_diffusers_keeps_in_float32():
    from diffusers import WanTransformer3DModel

    from harness.models.wan_causal.loader import load_wan_causal

    model = load_wan_causal({**TINY, "dtype": "bfloat16"}, None)
    keep = WanTransformer3DModel._keep_in_fp32_modules
    dtypes = {name: p.dtype for name, p in model.transformer.named_parameters()}
    assert any(_kept(n, keep) for n in dtypes) and any(not _kept(n, keep) for n in dtypes)
    assert all(d == (torch.float32 if _kept(n, keep) else torch.bfloat16) for n, d in dtypes.items()), dtypes
    # transformers keeps umT5's `wo` in float32 only under float16; the VAE lists nothing
    assert {p.dtype for p in model.text_encoder.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in model.vae.parameters()} == {torch.bfloat16}
    assert model.transformer.dtype == torch.bfloat16  # what cache sizes are computed from


def test_float16_keeps_umt5s_wo_in_float32_as_transformers_does():
    from transformers import UMT5Config, UMT5EncoderModel

    from harness.models.wan_causal.parts import TINY_TEXT

    encoder = cast_keeping_fp32(UMT5EncoderModel(UMT5Config(**TINY_TEXT)), torch.float16)
    dtypes = {name: p.dtype for name, p in encoder.named_parameters()}
    assert all(d == (torch.float32 if _kept(n, ["wo"]) else torch.float16) for n, d in dtypes.items())
    assert torch.float32 in dtypes.values()


def test_bf16_rollout_runs_with_float32_modules_and_agrees_with_float32():
    from harness.engine.rollout import rollout
    from harness.engine.samplers import Sampler
    from harness.models.wan_causal.loader import load_wan_causal
    from methods.base import Base

    videos = {}
    for dtype in ("float32", "bfloat16"):
        model = load_wan_causal({**TINY, "dtype": dtype}, None)
        videos[dtype] = rollout(model, Base(), ["a red circle bouncing"], [0], Sampler(steps=2, shift=5.0)).videos
    assert torch.isfinite(videos["bfloat16"]).all()
    assert (videos["bfloat16"].float() - videos["float32"]).abs().mean() < 0.01  # random tiny weights: bf16 noise


def test_every_ledger_clock_waits_for_cuda_work_before_reading_the_time(monkeypatch):
    events = []
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: events.append(("sync", device)))
    monkeypatch.setattr(ledger_module.time, "perf_counter", lambda: events.append("clock") or float(len(events)))
    ledger = Ledger()
    with ledger.clock("decode_seconds"):
        events.append("work")
    assert events == [("sync", 0), ("sync", 1), "clock", "work", ("sync", 0), ("sync", 1), "clock"]
    events.clear()
    monkeypatch.setattr(ledger_module, "peak_memory_mb", lambda: 0.0)
    with ledger.timed():
        events.append("work")
    assert events == [("sync", 0), ("sync", 1), "clock", "work", ("sync", 0), ("sync", 1), "clock"]


def test_a_process_without_cuda_work_never_synchronises(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: pytest.fail("synchronised"))
    with Ledger().clock("wall_seconds"):
        pass


@pytest.mark.slow
def test_prompts_are_encoded_once_per_encoder_and_read_back_bit_identical(tmp_path, monkeypatch):
    from harness.experiment.pipeline import generate, resolve_run
    from harness.experiment.plans import compose
    from harness.models.wan_causal.text import WanTextEncoder
    from harness.store.cells import Store

    calls = []
    encode = WanTextEncoder.__call__
    monkeypatch.setattr(WanTextEncoder, "__call__", lambda self, prompts: calls.append(list(prompts)) or encode(self, prompts))
    overrides = ["model=wan_tiny", "model.num_chunks=1", "suite=world_smoke", "samples_per_prompt=1",
                 "sampler.steps=2", "batch_size=4", "threads=1", f"paths.store={tmp_path}"]
    store = Store(tmp_path)

    def videos(run) -> list[bytes]:
        return [p.read_bytes() for p in sorted(store.cell(run.key).path.glob("videos/*"))]

    run = resolve_run(compose(overrides))
    model = run.model  # loaded once per process (harness.models.loader): start it, and end it, empty
    monkeypatch.setattr(model, "embedded", {})
    generate(run, store, progress=False)
    first = videos(run)
    assert len(calls) == 5 and all(len(c) == 1 for c in calls)  # 4 prompts and the negative prompt, one by one
    assert len(list((tmp_path / "embeddings").rglob("*.safetensors"))) == 5

    calls.clear()
    shutil.rmtree(store.cell(run.key).path)
    again = resolve_run(compose(overrides))
    model.embedded.clear()  # as in a new process: nothing in memory, the store's files only
    generate(again, store, progress=False)
    assert calls == [] and videos(again) == first

    calls.clear()
    shutil.rmtree(store.cell(run.key).path)
    other = resolve_run(compose(overrides))
    monkeypatch.setattr(other.model, "text_digest", "another encoder")
    generate(other, store, progress=False)
    assert len(calls) == 5  # another encoder's digest reads none of the first one's embeddings
    assert len(list((tmp_path / "embeddings").iterdir())) == 2
