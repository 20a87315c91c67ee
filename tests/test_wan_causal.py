"""The wan_causal backend (Self-Forcing / CausVid over diffusers' Wan components) at its tiny size:
the KV cache equals a block-causal recompute (with and without local attention and sink frames) and
diffusers' own block-causal SkyReels-V2 model, denoise never touches the cache, candidates equal
separate calls, the VAE decodes chunk by chunk as it decodes whole, the folder path loads what the
seeded build makes, the converter maps upstream's parameter names at full size, and bad input of
every kind is one line before any compute."""
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT, fast_with
from harness.cli import main
from harness.experiment.plans import compose
from harness.models.base import NoiseLevel
from harness.models.wan_causal.loader import build_tiny, save_tiny
from harness.models.wan_causal.parts import ARCHITECTURES
from harness.models.wan_causal.model import WanCausalConfig, WanCausalModel
from harness.experiment.pipeline import load_model, sampler_from
from harness.engine.samplers import Sampler
from harness.engine.rollout import rollout
from methods.base import Base

PROMPTS = ["a red circle bouncing", "a blue square and a yellow triangle moving left"]


def tiny_model(dtype=torch.float32, **cfg) -> WanCausalModel:
    transformer, text, vae = build_tiny(0, 64)
    model = WanCausalModel(WanCausalConfig(name="wan_tiny", height=32, width=32, max_prompt_tokens=64, **cfg),
                           transformer, text, vae, "test", {})
    return model.to(dtype).eval()


def chunk(shape, seed, dtype=torch.float32):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("local", [dict(), dict(local_attn_size=6, sink_size=0), dict(local_attn_size=7, sink_size=1)],
                         ids=["whole-prefix", "local-6", "local-7-sink-1"])
def test_cached_chunks_equal_a_block_causal_recompute(dtype, tol, local):
    model = tiny_model(dtype, num_chunks=5, **local)
    shape = (2, 3, *model.spec.latent_shape)
    cond = model.encode(PROMPTS)
    cache, history = model.new_cache(2), []
    for c in range(5):
        x = chunk(shape, 10 + c, dtype)
        sigma = NoiseLevel(0.8, 800.0)
        cached = model.denoise(x, sigma, cond, cache)
        if history:
            reference = model.recompute_denoise(torch.cat(history, 1), x, sigma, cond)
            assert (cached - reference).abs().max() <= tol
        clean = chunk(shape, 100 + c, dtype)
        model.commit(clean, cond, cache)
        history.append(clean)
    if local:  # the cache keeps the sink frames and the most recent ones, no more
        n = model.causal.tokens_per_frame(32 // 8, 32 // 8)
        kept = local["sink_size"] + local["local_attn_size"] - local["sink_size"] - 3
        assert cache.kept[: local["sink_size"]] == list(range(local["sink_size"]))
        assert len(cache.kept) == kept and cache.layers[0].k.shape[1] == kept * n


def test_local_attention_changes_the_output_and_the_sink_matters():
    """The window is real: without it (or without the sink) the last chunk's x0 differs."""
    outs = {}
    for name, local in {"all": {}, "local": dict(local_attn_size=6), "sink": dict(local_attn_size=7, sink_size=1)}.items():
        model = tiny_model(num_chunks=4, **local)
        cond, cache = model.encode(PROMPTS[:1]), model.new_cache(1)
        for c in range(3):
            model.commit(chunk((1, 3, *model.spec.latent_shape), c), cond, cache)
        outs[name] = model.denoise(chunk((1, 3, *model.spec.latent_shape), 9), 0.5, cond, cache)
    assert not torch.allclose(outs["all"], outs["local"], atol=1e-4)
    assert not torch.allclose(outs["local"], outs["sink"], atol=1e-4)


def test_matches_diffusers_skyreels_v2_block_causal_model():
    """An independent reference: diffusers' SkyReelsV2Transformer3DModel, same weights, its own dense
    block-causal mask and per-frame timesteps, gives the x0 of the cached path."""
    from diffusers import SkyReelsV2Transformer3DModel

    model = tiny_model()
    sky = SkyReelsV2Transformer3DModel(**ARCHITECTURES["tiny"], num_frame_per_block=3).eval()
    assert not sky.load_state_dict(model.transformer.state_dict(), strict=True).missing_keys
    cond, cache = model.encode(PROMPTS), model.new_cache(2)
    clean = [chunk((2, 3, *model.spec.latent_shape), s) for s in (1, 2)]
    for c in clean:
        model.commit(c, cond, cache)
    x, sigma = chunk((2, 3, *model.spec.latent_shape), 3), 0.625
    ours = model.denoise(x, sigma, cond, cache)
    seq = torch.cat([*clean, x], 1)
    t = torch.tensor([0.0] * 6 + [1000 * sigma] * 3).expand(2, -1)
    with torch.no_grad():
        v = sky(seq.transpose(1, 2), t, cond.tokens, enable_diffusion_forcing=True).sample.transpose(1, 2)
    assert (ours - (x - sigma * v[:, 6:])).abs().max() <= 1e-5


def test_denoise_never_mutates_the_cache_and_candidates_equal_separate_calls():
    model = tiny_model()
    cond, cache = model.encode(PROMPTS), model.new_cache(2)
    model.commit(chunk((2, 3, *model.spec.latent_shape), 1), cond, cache)
    before = [(kv.k.clone(), kv.v.clone()) for kv in cache.layers]
    xs = chunk((6, 3, *model.spec.latent_shape), 2)  # 3 candidates per video, adjacent
    together = model.denoise(xs, 0.9375, cond, cache)
    assert all(torch.equal(kv.k, k) and torch.equal(kv.v, v) for kv, (k, v) in zip(cache.layers, before))
    assert all(kv.k.shape[0] == 2 for kv in cache.layers)  # the history is stored once per video
    for c in range(3):
        alone = model.denoise(xs[c::3].contiguous(), 0.9375, cond, cache)
        assert (together[c::3] - alone).abs().max() <= 1e-6


def test_vae_decodes_chunk_by_chunk_as_it_decodes_whole():
    model = tiny_model()
    latents = chunk((2, 9, *model.spec.latent_shape), 4)
    whole = model.decode(latents)
    a, state = model.decode_next(latents[:, :3], None)
    b, state2 = model.decode_next(latents[:, 3:6], state)
    c, _ = model.decode_next(latents[:, 6:], state2)
    assert whole.shape[1] == 1 + 4 * 8 and torch.equal(torch.cat([a, b, c], 1), whole)
    again, _ = model.decode_next(latents[:, 3:6], state)  # the state was not mutated
    assert torch.equal(again, b)
    candidates, kept = model.decode_next(latents[:, 3:6].repeat_interleave(3, 0), state)
    assert torch.equal(candidates[::3], b) and kept.rows == 6


def test_the_sinusoid_is_float64_as_upstream():
    """diffusers computes the timestep sinusoid in float32, Self-Forcing in float64: ours is upstream's."""
    from harness.models.wan_causal.transformer import timestep_sinusoid

    t = torch.tensor([937.5, 833.3333333333334])
    half = 128
    upstream = torch.outer(t.double(), torch.pow(10000, -torch.arange(half).double().div(half)))
    assert torch.equal(timestep_sinusoid(t, 256), torch.cat([upstream.cos(), upstream.sin()], 1))


def test_self_forcing_and_causvid_schedules_are_upstreams():
    sf = sampler_from(compose(["model=self_forcing"]))
    assert [round(s.timestep, 2) for s in sf.sigmas] == [1000.0, 937.5, 833.33, 625.0]
    assert [round(float(s), 4) for s in sf.sigmas] == [1.0, 0.9375, 0.8333, 0.625]
    cv = sampler_from(compose(["model=causvid"]))
    assert [s.timestep for s in cv.sigmas] == [1000.0, 757.0, 522.0]
    # upstream's FlowMatchScheduler(shift, sigma_min=0, extra_one_step=True).set_timesteps(1000), in float32
    def table(shift):
        s = torch.linspace(1.0, 0.0, 1001)[:-1]
        s = shift * s / (1 + (shift - 1) * s)
        return s, s * 1000
    sigmas, timesteps = table(8.0)  # CausVid: sigma of the entry nearest each timestep (argmin)
    for level in cv.sigmas:
        assert float(level) == sigmas[(timesteps.double() - level.timestep).abs().argmin()].item()
    sigmas, timesteps = table(5.0)  # Self-Forcing's warp: cat(timesteps, [0])[1000 - t], conditioned on it
    for level, t in zip(sf.sigmas, [1000, 750, 500, 250]):
        assert float(level) == sigmas[1000 - t].item() and level.timestep == timesteps[1000 - t].item()
    assert sampler_from(compose(["model=causvid", "sampler.steps=4"])).timesteps is None  # evenly spaced then


# -- loading -----------------------------------------------------------------------------------

def test_the_folder_path_loads_what_the_seeded_build_makes(tmp_path, wan_tiny):
    """Saving the tiny components in diffusers' layout and loading them as a real model does
    (from_pretrained, local files only, the tokenizer included) gives the same videos."""
    paths = save_tiny(tmp_path, seed=0, max_tokens=64)
    cfg = compose(["model=self_forcing", f"paths.weights={tmp_path}", "model.architecture=tiny", "model.height=32",
                   "model.width=32", "model.device=cpu", "model.dtype=float32", "model.max_prompt_tokens=64",
                   "model.negative_prompt=", *(f"model.{k}={v}" for k, v in paths.items())])
    from_folders = load_model(cfg).with_chunks(2)
    sampler = Sampler(steps=2)
    a = rollout(from_folders, Base(), PROMPTS, [0, 1], sampler).videos
    b = rollout(wan_tiny.with_chunks(2), Base(), PROMPTS, [0, 1], sampler).videos
    assert torch.equal(a, b)


def test_missing_weights_are_listed_one_line_per_file_before_any_compute(tmp_path, capsys):
    store = tmp_path / "store"
    code = main(["run", "model=self_forcing", f"paths.weights={tmp_path / 'weights'}", f"paths.store={store}",
                 "suite=world_smoke"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    lines = err.strip().splitlines()
    expected = ["self_forcing/transformer/config.json", "self_forcing/transformer/diffusion_pytorch_model.safetensors",
                "text_encoder/config.json", "text_encoder/model.safetensors", "tokenizer/tokenizer_config.json",
                "tokenizer/tokenizer.json", "vae/config.json", "vae/diffusion_pytorch_model.safetensors"]
    for name in expected:
        assert sum(name in line for line in lines) == 1, name
    assert any("gdhe17/Self-Forcing" in line for line in lines)
    assert any("Wan-AI/Wan2.1-T2V-1.3B-Diffusers" in line for line in lines)
    assert not store.exists()
    assert main(["weights", "check", "model=causvid", f"paths.weights={tmp_path / 'weights'}"]) == 2
    out = capsys.readouterr().out
    assert out.count("MISSING") == 8 and "tianweiy/CausVid" in out


def test_a_missing_or_broken_component_folder_is_named(tmp_path, capsys):
    paths = save_tiny(tmp_path, seed=0, max_tokens=64)
    base = ["model=self_forcing", f"paths.weights={tmp_path}", "model.architecture=tiny", "model.height=32",
            "model.width=32", "model.device=cpu", "model.dtype=float32", "suite=world_smoke",
            f"paths.store={tmp_path / 'store'}", *(f"model.{k}={v}" for k, v in paths.items())]
    (tmp_path / paths["vae"] / "config.json").unlink()
    assert main(["run", *base]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 2 and "tiny/vae/config.json" in err.splitlines()[1]  # the header, then the file
    (tmp_path / paths["vae"] / "config.json").write_text("{not json")
    assert main(["run", *base]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "vae folder" in err and not (tmp_path / "store").exists()
    assert main(["run", *base, "model.architecture=wan2.1-t2v-1.3b"]) == 2


def test_bad_prompts_and_settings_are_one_line_before_anything_is_written(tmp_path, capsys):
    store = tmp_path / "store"
    fast = ["model=wan_tiny", "model.num_chunks=1", "samples_per_prompt=1", f"paths.store={store}", "metric=real"]
    cases = [
        (["suite.prompts=[" + "a very long prompt " * 10 + "]"], "more than the text encoder's 64"),
        (["method=cfg", "model.negative_prompt=null"], "needs an unconditional branch"),
        (["model.num_chunks=20"], "num_chunks=20 is out of range"),
        (["model.local_attn_size=2"], "leaves no room"),
        (["model.dtype=int8"], "floating-point"),
        (["model.device=cuda:0"] if not torch.cuda.is_available() else ["model.device=tpu"], "device"),
        (["sampler.timesteps=[1000,800]", "sampler.steps=3"], "timesteps"),
    ]
    cases.append((["metric=default", "suite.prompts=[a dog on a sofa]"], "scores shapes-world prompts only"))
    for overrides, reason in cases:
        assert main(["run", *fast_with([*overrides, "suite=world_smoke"], fast)]) == 2, overrides
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and reason in err and "Traceback" not in err, (overrides, err)
    assert not store.exists()


# -- the converter -------------------------------------------------------------------------------

def upstream_shapes(dim: int, ffn: int, layers: int, text_dim: int = 4096, freq: int = 256, out: int = 16,
                    inp: int = 16) -> dict[str, tuple[int, ...]]:
    """CausalWanModel's parameter names and shapes (wan/modules/causal_model.py, the original Wan names)."""
    shapes = {"patch_embedding.weight": (dim, inp, 1, 2, 2), "patch_embedding.bias": (dim,),
              "text_embedding.0.weight": (dim, text_dim), "text_embedding.0.bias": (dim,),
              "text_embedding.2.weight": (dim, dim), "text_embedding.2.bias": (dim,),
              "time_embedding.0.weight": (dim, freq), "time_embedding.0.bias": (dim,),
              "time_embedding.2.weight": (dim, dim), "time_embedding.2.bias": (dim,),
              "time_projection.1.weight": (6 * dim, dim), "time_projection.1.bias": (6 * dim,),
              "head.head.weight": (out * 4, dim), "head.head.bias": (out * 4,), "head.modulation": (1, 2, dim)}
    for i in range(layers):
        b = f"blocks.{i}."
        shapes[b + "modulation"] = (1, 6, dim)
        for attn in ("self_attn", "cross_attn"):
            for proj in "qkvo":
                shapes[f"{b}{attn}.{proj}.weight"], shapes[f"{b}{attn}.{proj}.bias"] = (dim, dim), (dim,)
            shapes[f"{b}{attn}.norm_q.weight"] = shapes[f"{b}{attn}.norm_k.weight"] = (dim,)
        shapes[b + "norm3.weight"] = shapes[b + "norm3.bias"] = (dim,)
        shapes[b + "ffn.0.weight"], shapes[b + "ffn.0.bias"] = (ffn, dim), (ffn,)
        shapes[b + "ffn.2.weight"], shapes[b + "ffn.2.bias"] = (dim, ffn), (dim,)
    return shapes


def test_the_converter_maps_the_full_size_upstream_names_without_a_missing_key():
    from diffusers import WanTransformer3DModel

    from harness.models.wan_causal.convert import check_fits, to_diffusers

    shapes = upstream_shapes(1536, 8960, 30)
    assert len(shapes) == 825
    with torch.device("meta"):
        # as Self-Forcing saves it: `model.` (the wrapper) and FSDP / checkpointing segments
        state = {f"model._fsdp_wrapped_module.{k}" if k.startswith("blocks.0.") else f"model.{k}":
                 torch.empty(s) for k, s in shapes.items()}
        target = WanTransformer3DModel(**ARCHITECTURES["wan2.1-t2v-1.3b"]).state_dict()
    converted = to_diffusers(state)
    check_fits(converted, target, "upstream", "wan2.1-t2v-1.3b")  # raises on the first mismatch
    assert sum(math.prod(t.shape) for t in converted.values()) == 1_418_996_800


def test_convert_writes_a_loadable_folder_and_refuses_another_architecture(tmp_path, capsys):
    from diffusers import WanTransformer3DModel

    a = ARCHITECTURES["tiny"]
    dim = a["num_attention_heads"] * a["attention_head_dim"]
    state = {f"model.{k}": torch.randn(s, generator=torch.Generator().manual_seed(i))
             for i, (k, s) in enumerate(upstream_shapes(dim, a["ffn_dim"], a["num_layers"], text_dim=a["text_dim"]).items())}
    ckpt = tmp_path / "self_forcing_dmd.pt"
    torch.save({"generator": {}, "generator_ema": state}, ckpt)
    weights = tmp_path / "weights"
    args = ["weights", "convert", f"checkpoint={ckpt}", "model=self_forcing", "model.architecture=tiny",
            f"paths.weights={weights}"]
    assert main(args) == 0
    assert "content digest" in capsys.readouterr().out
    loaded = WanTransformer3DModel.from_pretrained(weights / "self_forcing" / "transformer")
    assert torch.equal(loaded.proj_out.weight, state["model.head.head.weight"])
    # diffusers' norm2 (cross-attention) is upstream's norm3
    assert torch.equal(loaded.blocks[1].norm2.weight, state["model.blocks.1.norm3.weight"])
    assert torch.equal(loaded.blocks[0].attn2.to_out[0].bias, state["model.blocks.0.cross_attn.o.bias"])
    assert main(args) == 2 and "exists" in capsys.readouterr().err  # never overwrites
    wrong = dict(state, **{"model.blocks.1.ffn.0.weight": torch.zeros(7, dim)})
    torch.save({"generator_ema": wrong}, ckpt)
    assert main([*args[:-1], f"paths.weights={tmp_path / 'other'}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "blocks.1.ffn.net.0.proj.weight" in err and not (tmp_path / "other").exists()
    torch.save({"something": 1}, ckpt)
    assert main([*args[:-1], f"paths.weights={tmp_path / 'other'}"]) == 2
    assert "no 'generator_ema'" in capsys.readouterr().err


# -- the whole harness on wan_tiny ---------------------------------------------------------------

METHODS = ["base", "bon", "sop", "pnp", "cfg", "cfg_zero", "lora", "init_noise_refiner", "autorefiner"]


@pytest.mark.slow
@pytest.mark.parametrize("model,adapter", [("wan_tiny", "null"), ("toy_sf", "dmd")])
@pytest.mark.parametrize("method", METHODS)
def test_every_method_runs_on_wan_tiny_and_toy_sf(tmp_path, method, model, adapter, capsys):
    """Every method through the real backend, and on the distilled toy base under its warped sampler
    with its own shipped DMD adapters (assets/methods/toy_sf/)."""
    extra = [f"method.params.checkpoint={adapter}"] if method in ("lora", "init_noise_refiner", "autorefiner") else []
    code = main(["run", f"model={model}", "model.num_chunks=2", f"method={method}", *extra, "suite=world_smoke",
                 "samples_per_prompt=1", f"paths.store={tmp_path}"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "4 videos generated" in out.out


@pytest.mark.slow
@pytest.mark.parametrize("method,objective", [("autorefiner", "reward"), ("lora", "dmd"), ("init_noise_refiner", "dmd")])
def test_training_runs_on_wan_tiny(tmp_path, capsys, method, objective):
    out = tmp_path / "adapter.safetensors"
    assert main(["train", f"train={objective}", "model=wan_tiny", "model.num_chunks=2", f"method={method}",
                 "train.steps=2", "train.batch=2", f"train.out={out}"]) == 0, capsys.readouterr().err
    assert out.is_file()
    code = main(["run", "model=wan_tiny", "model.num_chunks=2", f"method={method}", f"method.params.checkpoint={out}",
                 "suite=world_smoke", "samples_per_prompt=1", f"paths.store={tmp_path / 'store'}",
                 "metric=real"])
    assert code == 0, capsys.readouterr().err


def test_dmd_scores_are_separate_models_and_the_fake_one_trains(wan_tiny):
    """On Wan the real and fake scores are models of their own (bidirectional), not the generator; the
    fake score's parameters move with its optimizer, the real score's and the generator's do not."""
    from harness.engine.context import RolloutResult
    from harness.train.distributed import Split, World
    from harness.train.objectives import DmdObjective

    model = wan_tiny.with_chunks(2)
    objective = DmdObjective(real_guidance=3.0)
    objective.setup(model, Sampler(steps=4, shift=5.0), Path("weights"))
    assert objective.real.module is not model.transformer and objective.fake.module is not objective.real.module
    real_before = [p.clone() for p in objective.real.module.parameters()]
    fake_before = [p.clone() for p in objective.fake.module.parameters()]
    latents = chunk((2, 6, *model.spec.latent_shape), 5).requires_grad_(True)
    result = RolloutResult(torch.zeros(2, 1, 3, 32, 32), latents, None)
    draws = objective.draw(model.spec, 2, torch.Generator().manual_seed(0))
    loss, _ = objective.loss(result, PROMPTS, draws)
    loss.backward()
    assert latents.grad.abs().sum() > 0
    objective.update(draws, lambda ks, rows: [(latents.detach(), PROMPTS) for _ in ks], Split.of(2, 2, World()))
    assert all(torch.equal(a, b) for a, b in zip(real_before, objective.real.module.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(fake_before, objective.fake.module.parameters()))


@pytest.mark.slow
def test_a_vbench_suite_cell_exports_in_vbench_standard_mode(tmp_path, capsys):
    import json

    info = tmp_path / "VBench_full_info.json"
    info.write_text(json.dumps([{"prompt_en": "a dog running on grass", "dimension": ["dynamic_degree"]},
                                {"prompt_en": "a red car", "dimension": ["color"]}]))
    common = ["model=wan_tiny", "model.num_chunks=1", "suite=vbench", f"vbench.full_info={info}",
              f"paths.store={tmp_path / 'store'}", "metric=real"]
    assert main(["run", *common]) == 0
    assert main(["vbench", "export", str(tmp_path / "out"), *common, "vbench.mode=vbench_standard"]) == 0, \
        capsys.readouterr().err
    videos = sorted(p.name for p in (tmp_path / "out").glob("*/videos/*.mp4"))
    assert videos == sorted(f"{p}-{i}.mp4" for p in ("a dog running on grass", "a red car") for i in range(5))


@pytest.mark.slow
def test_wan_tiny_is_bit_identical_across_processes(tmp_path):
    script = ("import sys, torch; sys.path.insert(0, '.'); torch.set_num_threads(1);"
              "from harness.experiment.plans import compose; from harness.experiment.pipeline import load_model;"
              "from harness.engine.rollout import rollout, Sampler; from methods.base import Base;"
              "m = load_model(compose(['model=wan_tiny'])).with_chunks(2);"
              f"torch.save(rollout(m, Base(), {PROMPTS!r}, [0, 1], Sampler(steps=2)).videos, sys.argv[1])")
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "there.pt")], check=True, cwd=ROOT)
    exec(script.replace("sys.argv[1]", repr(str(tmp_path / "here.pt"))), {})  # the same rollout in this process
    assert torch.equal(torch.load(tmp_path / "here.pt", weights_only=True),
                       torch.load(tmp_path / "there.pt", weights_only=True))
