"""The trained methods as samplers, on both backends (the toy and the tiny wan_causal): untrained they
are base bit for bit, adapters are deltas on the one shared base, the ledger counts one refiner call
per refinement (Table 2's ΔNFE through the report path), each reflective-KV-cache switch really removes
its input, and bad settings or checkpoints are refused with one line before any compute."""
import itertools
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from conftest import ROOT, prepared_rollout
from harness.train.adapter_files import load_adapter, save_adapter
from harness.cli import main
from harness.experiment.plans import compose
from harness.errors import UsageError
from harness.engine.ledger import Ledger
from harness.experiment.pipeline import generate, open_store, resolve_run, score
from harness.store.cells import CellRef
from harness.report.write import write_report
from harness.engine.samplers import Sampler
from harness.engine.rollout import rollout
from methods.autorefiner import AutoRefiner
from methods.base import Base
from methods.init_noise_refiner import InitNoiseRefiner
from methods.lora import Lora

PROMPTS = ["a red circle bouncing", "a green triangle falling"]
SEEDS = [3, 4]
UNTRAINED = [
    (Lora, {}),
    (Lora, {"rank": 2, "alpha": 5.0}),
    (InitNoiseRefiner, {}),
    (InitNoiseRefiner, {"history": False}),
    (AutoRefiner, {}),
    (AutoRefiner, {"history": False, "previous_output": False, "timesteps": [500]}),
]


@pytest.fixture(scope="module", params=["toy", "wan_tiny"])
def model(request, toy, wan_tiny):
    return (toy if request.param == "toy" else wan_tiny).with_chunks(2)


def randomise_adapters(method) -> None:
    """Move every trainable tensor that starts at zero (LoRA B, a refiner's output head) away from it,
    as training would, so the adapters change the output."""
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in method.adapted.named_parameters():
            if p.requires_grad and not p.abs().max():
                p.normal_(std=0.05)


def bound(cls, model, sampler=None, **params):
    """A prepared method with its adapters built (roll it out with `rollout`: preparing again rebuilds them)."""
    method = cls(**params)
    method.prepare(model.spec, sampler or Sampler(), Path("weights"))
    method.bind(model)
    return method


@pytest.mark.parametrize("cls,params", UNTRAINED, ids=lambda v: getattr(v, "name", str(v)))
def test_untrained_methods_are_base_bit_for_bit(model, cls, params):
    base = prepared_rollout(model, Base(), PROMPTS, SEEDS, Sampler())
    method = prepared_rollout(model, cls(**params), PROMPTS, SEEDS, Sampler())
    assert torch.equal(method.videos, base.videos) and torch.equal(method.latents, base.latents)


@pytest.mark.parametrize("cls", [Lora, InitNoiseRefiner, AutoRefiner], ids=lambda c: c.name)
def test_trained_adapters_change_the_videos(model, cls):
    method = bound(cls, model)
    randomise_adapters(method)
    base = prepared_rollout(model, Base(), PROMPTS, SEEDS, Sampler())
    assert not torch.equal(rollout(model, method, PROMPTS, SEEDS, Sampler()).latents, base.latents)


@pytest.mark.parametrize("cls", [Lora, InitNoiseRefiner, AutoRefiner], ids=lambda c: c.name)
def test_adapters_are_deltas_on_the_shared_base(model, cls):
    """No weight of the base is copied (the adapted module holds the very base tensors) and the base
    module itself carries no adapter, so its digest and its videos stay as they were."""
    digest = model.digest()
    before = {n: p.detach().clone() for n, p in model.trainable.named_parameters()}
    method = bound(cls, model)
    randomise_adapters(method)
    base_tensors = {p.data_ptr() for p in model.trainable.parameters()}
    adapted = [p for p in method.adapted.parameters() if not p.requires_grad]
    assert adapted and all(p.data_ptr() in base_tensors or p.abs().max() == 0 for p in adapted)
    assert not any("lora" in name for name, _ in model.trainable.named_modules())
    assert model.digest() == digest
    assert all(torch.equal(p, before[n]) for n, p in model.trainable.named_parameters())


@pytest.mark.parametrize("timesteps,steps,refined", [
    (None, 4, 3), ([750], 4, 1), ([500, 250], 4, 2), ([750, 500, 250], 4, 3), (None, 2, 1)])
def test_autorefiner_ledger_adds_one_refiner_call_per_refined_step_per_chunk(model, timesteps, steps, refined):
    base, ledger = Ledger(), Ledger()
    prepared_rollout(model, Base(), PROMPTS, SEEDS, Sampler(steps=steps), base)
    prepared_rollout(model, AutoRefiner(timesteps=timesteps), PROMPTS, SEEDS, Sampler(steps=steps), ledger)
    calls = len(PROMPTS) * model.spec.num_chunks * refined
    assert ledger.refiner_calls == calls
    assert ledger.nfe == base.nfe + calls  # a refiner call is one NFE in the paper's units
    assert ledger.decodes == base.decodes and ledger.verifier_calls == 0


def test_init_noise_refiner_ledger_adds_one_refiner_call_per_chunk(model):
    base, ledger = Ledger(), Ledger()
    prepared_rollout(model, Base(), PROMPTS, SEEDS, Sampler(), base)
    prepared_rollout(model, InitNoiseRefiner(), PROMPTS, SEEDS, Sampler(), ledger)
    assert ledger.refiner_calls == len(PROMPTS) * model.spec.num_chunks
    assert ledger.nfe == base.nfe + ledger.refiner_calls


SELF_FORCING = ["suite=world_smoke", "suite.prompts=[a red circle bouncing]", "samples_per_prompt=1",
                "model.num_chunks=7", "sampler=stochastic", "sampler.steps=4"]
TABLE_2 = {"lora": 0, "init_noise_refiner": 7, "autorefiner": 21}  # ΔNFE per video


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["toy", "wan_tiny"])
def test_table_2_compute_columns_through_the_report(tmp_path, backend):
    """Rollout -> store -> compute metric -> report, as tests/test_compute_columns.py does for search."""
    refs = []
    for method in ["base", *TABLE_2]:
        extra = [] if method == "base" else ["method.params.checkpoint=null"]
        cfg = compose([*SELF_FORCING, f"model={backend}", f"method={method}", *extra,
                       f"paths.store={tmp_path / 'store'}"])
        run = resolve_run(cfg)
        store = open_store(cfg)
        generate(run, store, progress=False)
        score(store.cell(run.key), OmegaConf.create({"compute": {}}), Path(cfg.paths.weights))
        refs.append(CellRef(run.key, {"method": method}))
    paths = write_report(store, refs, tmp_path / "report", "table 2", metrics=["overhead", "compute"],
                         baseline=refs[0].key)
    summary = pd.read_csv(paths["report.csv"]).set_index(["method", "metric"])["mean"]
    for method, delta_nfe in TABLE_2.items():
        assert summary[(method, "overhead.delta_nfe")] == delta_nfe
        assert summary[(method, "overhead.verify")] == 0 and summary[(method, "overhead.delta_vae")] == 0
        assert summary[(method, "compute.refiner_calls")] == (delta_nfe if method != "lora" else 0)


# -- the reflective KV cache ---------------------------------------------------------------------

def refiner_output(method, model, history_chunk=None, previous=None):
    """Δε for a fixed noise of chunk 1 after the refiner's history saw `history_chunk`."""
    gen = torch.Generator().manual_seed(0)
    shape = (1, model.spec.frames_per_chunk, *model.spec.latent_shape)
    eps = torch.randn(shape, generator=gen)
    cond = model.encode(PROMPTS[:1])
    ledger = Ledger()
    with torch.inference_mode():
        cache = method.refiner.new_cache(1)
        method.refiner.commit(history_chunk, cond, cache, ledger)
        return method.refiner(eps, 0.5, cond, cache, model.spec.frames_per_chunk, previous, ledger)


@pytest.mark.parametrize("history", [True, False])
@pytest.mark.parametrize("previous", [True, False])
def test_each_kv_cache_switch_removes_its_input(model, history, previous):
    method = bound(AutoRefiner, model, history=history, previous_output=previous)
    randomise_adapters(method)
    shape = (1, model.spec.frames_per_chunk, *model.spec.latent_shape)
    a, b = (torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in (1, 2))
    reference = refiner_output(method, model, history_chunk=a, previous=a)
    other_history = refiner_output(method, model, history_chunk=b, previous=a)
    other_previous = refiner_output(method, model, history_chunk=a, previous=b)
    assert reference.abs().max() > 0
    assert torch.equal(reference, other_history) != history
    assert torch.equal(reference, other_previous) != previous


@pytest.mark.parametrize("history", [True, False])
def test_init_noise_refiner_history_switch_removes_the_history(model, history):
    method = bound(InitNoiseRefiner, model, history=history)
    randomise_adapters(method)
    a, b = (torch.full((1, model.spec.frames_per_chunk, *model.spec.latent_shape), v) for v in (0.5, -0.5))
    assert torch.equal(refiner_output(method, model, a), refiner_output(method, model, b)) != history


# -- merged adapters (method.params.merge) --------------------------------------------------------

def trained_pair(cls, model, sampler):
    """The same trained (randomised) adapters, sampling merged and as deltas."""
    unmerged = bound(cls, model, sampler, merge=False)
    randomise_adapters(unmerged)
    merged = bound(cls, model, sampler)
    merged.load_adapter_state(unmerged.adapter_state(), "the unmerged twin")
    return merged, unmerged


def lora_layers_that_sample(method, model) -> list[str]:
    view = method.sampling_refiner.net if hasattr(method, "refiner") else method.bind(model)
    return [name for name, _ in view.trainable.named_modules() if "lora" in name]


@pytest.mark.parametrize("cls", [Lora, InitNoiseRefiner, AutoRefiner], ids=lambda c: c.name)
def test_merged_adapters_sample_as_their_deltas_do_within_float_rounding(model, cls):
    """No LoRA layer runs when merged, and the videos move from the deltas' by float rounding alone:
    at most 1e-3 of what the adapters move them from base."""
    sampler = Sampler(steps=2)
    merged, unmerged = trained_pair(cls, model, sampler)
    a = rollout(model, merged, PROMPTS[:1], SEEDS[:1], sampler).latents
    b = rollout(model, unmerged, PROMPTS[:1], SEEDS[:1], sampler).latents
    base = prepared_rollout(model, Base(), PROMPTS[:1], SEEDS[:1], sampler).latents
    assert not lora_layers_that_sample(merged, model) and lora_layers_that_sample(unmerged, model)
    assert (a - b).abs().max() <= 1e-3 * (b - base).abs().max()


@pytest.mark.parametrize("cls", [Lora, InitNoiseRefiner, AutoRefiner], ids=lambda c: c.name)
def test_merging_leaves_the_base_weights_untouched_and_shared(toy, cls):
    """The base's tensors keep their bits and their storage, base cells sampled in the same process
    keep theirs, and the merged copy adds one weight per adapted layer, nothing more."""
    model, sampler = toy.with_chunks(2), Sampler(steps=2)
    before = {n: (p.detach().clone(), p.data_ptr()) for n, p in model.trainable.named_parameters()}
    digest = model.digest()
    base_videos = rollout(model, Base(), PROMPTS[:1], SEEDS[:1], sampler).videos
    method = bound(cls, model, sampler)
    randomise_adapters(method)
    rollout(model, method, PROMPTS[:1], SEEDS[:1], sampler)
    assert all(torch.equal(p, before[n][0]) and p.data_ptr() == before[n][1]
               for n, p in model.trainable.named_parameters())
    assert model.digest() == digest
    assert torch.equal(rollout(model, Base(), PROMPTS[:1], SEEDS[:1], sampler).videos, base_videos)
    view = method.sampling_refiner.net if hasattr(method, "refiner") else method.bind(model)
    own = {p.data_ptr() for p in itertools.chain(model.trainable.parameters(), method.adapted.parameters())}
    added = [p for p in view.trainable.parameters() if p.data_ptr() not in own]
    adapted_layers = {name.rsplit(".lora_A", 1)[0] for name, _ in method.adapted.named_modules() if ".lora_A" in name}
    assert len(added) == len(adapted_layers) > 0


@pytest.mark.parametrize("cls", [Lora, InitNoiseRefiner, AutoRefiner], ids=lambda c: c.name)
def test_merged_sampling_is_deterministic_and_follows_the_adapters(toy, cls):
    """Twice, or from a fresh instance with the same adapters, merged sampling gives the same videos bit
    for bit; adapters written after a merge are merged again before the next rollout samples (it then
    agrees with the deltas of the new weights)."""
    model, sampler = toy.with_chunks(2), Sampler(steps=2)
    method = bound(cls, model, sampler)
    randomise_adapters(method)
    first = rollout(model, method, PROMPTS[:1], SEEDS[:1], sampler)
    assert torch.equal(rollout(model, method, PROMPTS[:1], SEEDS[:1], sampler).videos, first.videos)
    fresh = bound(cls, model, sampler)
    fresh.load_adapter_state(method.adapter_state(), "the first instance")
    assert torch.equal(rollout(model, fresh, PROMPTS[:1], SEEDS[:1], sampler).videos, first.videos)
    with torch.no_grad():
        for p in method.trainable_parameters():
            p.mul_(2)
    moved = rollout(model, method, PROMPTS[:1], SEEDS[:1], sampler).latents
    deltas = bound(cls, model, sampler, merge=False)
    deltas.load_adapter_state(method.adapter_state(), "the first instance")
    reference = rollout(model, deltas, PROMPTS[:1], SEEDS[:1], sampler).latents
    assert (moved - reference).abs().max() <= 1e-3 * (reference - first.latents).abs().max()


@pytest.mark.parametrize("method", ["lora", "init_noise_refiner", "autorefiner"])
def test_the_merge_setting_is_in_the_cell_key(tmp_path, method):
    keys = {}
    for merge in ("true", "false"):
        cfg = compose(["suite=world_smoke", "samples_per_prompt=1", "model.num_chunks=2", f"method={method}",
                       f"method.params.merge={merge}", f"paths.store={tmp_path}"])
        run = resolve_run(cfg)
        assert run.spec["method"]["params"]["merge"] is (merge == "true")
        keys[merge] = run.key
    assert keys["true"] != keys["false"]


# -- bad input -----------------------------------------------------------------------------------

def test_bad_parameters_are_refused_when_the_method_is_built():
    for params in ({"rank": 0}, {"rank": -1}, {"rank": True}, {"alpha": 0}, {"history": "yes"},
                   {"timesteps": []}, {"timesteps": [750.0]}, {"steps": 3}, {"merge": "yes"}, {"merge": None}):
        with pytest.raises(UsageError):
            AutoRefiner(**params)
    with pytest.raises(UsageError, match="rank"):
        Lora(rank=0)


@pytest.mark.parametrize("timesteps,steps", [([700], 4), ([750, 600], 4), ([750], 2), (None, 1)])
def test_a_refined_timestep_outside_the_schedule_is_refused_before_any_compute(model, timesteps, steps):
    with pytest.raises(UsageError, match="timesteps|intermediate"):
        AutoRefiner(timesteps=timesteps).prepare(model.spec, Sampler(steps=steps), Path("weights"))


def write_checkpoint(path, method, model, base_digest=None, **arch_overrides):
    """An adapter file for `method` (prepared, untrained) as `refinery train` writes it."""
    save_adapter(path, method.adapter_state(), method.name, {**method.arch, **arch_overrides}, model.spec.name,
                 base_digest or model.digest(), 1, {"test": True})
    return str(path)


def test_checkpoints_for_another_method_model_or_architecture_are_refused(model, tmp_path):
    auto = bound(AutoRefiner, model)
    good = write_checkpoint(tmp_path / "auto.safetensors", auto, model)
    with pytest.raises(UsageError, match="trained for method 'autorefiner', not 'lora'"):
        Lora(checkpoint=good).prepare(model.spec, Sampler(), Path("weights"))
    with pytest.raises(UsageError, match="rank=4 .checkpoint: 8."):
        AutoRefiner(checkpoint=good, rank=4).prepare(model.spec, Sampler(), Path("weights"))
    other = write_checkpoint(tmp_path / "other.safetensors", auto, model, base_digest="0123456789abcdef")
    method = AutoRefiner(checkpoint=other)
    method.prepare(model.spec, Sampler(), Path("weights"))
    with pytest.raises(UsageError, match="digest 0123456789abcdef"):
        prepared_rollout(model, method, PROMPTS, SEEDS, Sampler())
    misfit = write_checkpoint(tmp_path / "misfit.safetensors", auto, model, rank=4)
    with pytest.raises(UsageError, match="does not fit"):
        bound(AutoRefiner, model, checkpoint=misfit)
    with pytest.raises(UsageError, match="missing"):
        Lora(checkpoint=str(tmp_path / "none.safetensors")).prepare(model.spec, Sampler(), Path("weights"))
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"not a safetensors file")
    with pytest.raises(UsageError, match="corrupt"):
        Lora(checkpoint=str(corrupt)).prepare(model.spec, Sampler(), Path("weights"))
    from harness.models.toy import SHIPPED
    with pytest.raises(UsageError, match="not a Refinery adapter"):
        Lora(checkpoint=str(SHIPPED["toy"])).prepare(model.spec, Sampler(), Path("weights"))


def test_a_checkpoint_round_trips_and_its_settings_are_the_methods(model, tmp_path):
    trained = bound(AutoRefiner, model, rank=2, timesteps=[750, 250])
    randomise_adapters(trained)
    path = write_checkpoint(tmp_path / "a.safetensors", trained, model)
    loaded = AutoRefiner(checkpoint=path)
    loaded.prepare(model.spec, Sampler(), Path("weights"))
    assert loaded.arch == trained.arch
    assert loaded.describe()["checkpoint_digest"] == load_adapter("autorefiner", path, model.spec.name).digest
    a = rollout(model, trained, PROMPTS, SEEDS, Sampler()).latents
    b = prepared_rollout(model, loaded, PROMPTS, SEEDS, Sampler()).latents
    assert torch.equal(a, b)


def test_cli_refuses_bad_method_settings_in_one_line(capsys):
    fast = ["suite=world_smoke", "samples_per_prompt=1", "model.num_chunks=2", "paths.store=/nonexistent/store"]
    for bad, reason in ((["method=autorefiner", "method.params.checkpoint=null", "method.params.timesteps=[700]"],
                         "timesteps [700] are not"),
                        (["method=lora", "method.params.checkpoint=null", "method.params.rank=0"], "rank=0"),
                        (["method=autorefiner", "method.params.checkpoint=no_such_tag"],
                         "autorefiner_no_such_tag")):
        assert main(["run", *fast, *bad]) == 2
        err = capsys.readouterr().err
        assert err.startswith("refinery: error:") and err.count("\n") == 1 and reason in err
    assert not Path("/nonexistent/store").exists()


@pytest.mark.slow
def test_sampling_a_trained_method_never_imports_the_trainer():
    """The shipped adapters sample through harness.train.adapters (and the adapter files) alone: the
    trainer, the objectives and the scaling code stay unimported, from composing the run to the last
    chunk."""
    script = (
        "import sys; from pathlib import Path; sys.path.insert(0, '.')\n"
        "from harness.models.toy import load_toy; from harness.engine.rollout import rollout\n"
        "from harness.engine.samplers import Sampler; from harness.experiment.needed import needed_files\n"
        "from harness.experiment.plans import compose\n"
        "from methods.autorefiner import AutoRefiner; from methods.init_noise_refiner import InitNoiseRefiner\n"
        "from methods.lora import Lora\n"
        "assert all(f.present for f in needed_files(compose(['method=autorefiner'])))\n"
        "model = load_toy().with_chunks(1)\n"
        "for method in (Lora(checkpoint='reward'), InitNoiseRefiner(checkpoint='reward'), AutoRefiner(checkpoint='dmd')):\n"
        "    method.prepare(model.spec, Sampler(), Path('weights'))\n"
        "    rollout(model, method, ['a red circle bouncing'], [0], Sampler())\n"
        "print(sorted(m for m in sys.modules if m.startswith('harness.train')))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    # what sampling needs of harness.train, and nothing of the trainer, objectives or the scaling code
    assert set(eval(result.stdout)) <= {"harness.train", "harness.train.adapters", "harness.train.adapter_files"}


@pytest.mark.parametrize("head", ["full", "lora"])
@pytest.mark.parametrize("cls", [InitNoiseRefiner, AutoRefiner], ids=lambda c: c.name)
def test_the_refiners_output_head_starts_at_zero_and_trains_in_full_or_within_the_rank(model, cls, head):
    """head=full: Δε is not confined to a low-rank subspace; the head's own weight and bias start at zero
    and one backward pass reaches all of its output dimensions (a gradient of full rank). head=lora:
    the zero head stays frozen and Δε is its rank-r LoRA branch."""
    method = bound(cls, model, head=head, rank=2)
    out = method.adapted.get_submodule(model.output_head)
    zero = out.base_layer if head == "lora" else out
    assert not zero.weight.abs().max() and not zero.bias.abs().max()
    assert zero.weight.requires_grad == zero.bias.requires_grad == (head == "full")
    cond = model.encode(PROMPTS)
    eps = torch.randn(len(PROMPTS), model.spec.frames_per_chunk, *model.spec.latent_shape,
                      generator=torch.Generator().manual_seed(0))
    delta = method.refiner(eps, 0.75, cond, method.refiner.new_cache(len(PROMPTS)), 0,
                           eps if cls is AutoRefiner else None, Ledger())
    (delta * torch.randn_like(delta)).sum().backward()
    grad = zero.weight.grad if head == "full" else out.lora_B["default"].weight.grad
    width = min(zero.out_features, zero.in_features)
    assert torch.linalg.matrix_rank(grad.double()) == (width if head == "full" else 2)


def test_refiners_trained_before_the_head_choice_load_as_lora_heads(toy_flow):
    """The shipped refiners of `toy_flow` predate `head` (their arch lacks it): they are LoRA heads, and asking
    for a full head from one is a conflict named in one line."""
    for cls in (InitNoiseRefiner, AutoRefiner):
        method = cls(checkpoint="dmd")
        method.prepare(toy_flow.spec, Sampler(), Path("weights"))
        assert "head" not in method.adapter.arch and method.arch["head"] == "lora"
        with pytest.raises(UsageError, match="head='full'"):
            cls(checkpoint="dmd", head="full").prepare(toy_flow.spec, Sampler(), Path("weights"))
