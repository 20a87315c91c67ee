"""Feature metrics: diversity (AutoRefiner Table 7's DINO column) and perceptual dynamics (its LPIPS
column), on the world probe and, with random weights and downloads blocked, on the real backbones."""
from __future__ import annotations

import itertools
import socket
import urllib.request

import lpips
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

import metrics.diversity as diversity
from harness.errors import UsageError
from harness.world.probe import PROBE_WEIGHTS
from harness.world.probe_train import render_videos
from harness.engine.metric import VideoBatch
from metrics.diversity import DINO_ARCH, DINO_VITB16, Diversity, build_dino, similarity_to_others, vit_embedder
from metrics.perceptual_dynamics import ALEXNET, PerceptualDynamics, lpips_style_distance


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def no_downloads(monkeypatch):
    """Every way these libraries fetch weights, and any socket connection, raises."""
    import huggingface_hub
    import timm.models._builder
    import timm.models._hub
    import torchvision.models._api

    def refuse(*args, **kwargs):
        raise AssertionError(f"a download was attempted: {args[:2]}")

    for owner, attr in [(urllib.request, "urlopen"), (urllib.request, "urlretrieve"),
                        (torch.hub, "load_state_dict_from_url"), (torch.hub, "download_url_to_file"),
                        (huggingface_hub, "hf_hub_download"), (timm.models._hub, "hf_hub_download"),
                        (timm.models._hub, "download_url_to_file"),
                        (timm.models._builder, "load_state_dict_from_url"),
                        (torchvision.models._api, "load_state_dict_from_url"),
                        (socket, "create_connection"), (socket.socket, "connect")]:
        monkeypatch.setattr(owner, attr, refuse)


def batch(videos: np.ndarray, prompts: list[str]) -> VideoBatch:
    return VideoBatch(np.asarray(videos), [{"prompt": p, "seed": i} for i, p in enumerate(prompts)])


def rendered(prompt: str, seeds: list[int]) -> np.ndarray:
    videos, _ = render_videos([prompt], seeds, "render")
    return videos.permute(0, 1, 3, 4, 2).numpy()


def fake_embedder(table: dict[int, np.ndarray]):
    """Videos whose first pixel holds an id -> that id's per-frame embeddings (F, D)."""
    def embed(videos: np.ndarray) -> torch.Tensor:
        return torch.tensor(np.stack([table[int(v[0, 0, 0, 0])] for v in videos]), dtype=torch.float64)
    return embed


def id_videos(ids: list[int], frames: int = 2) -> np.ndarray:
    videos = np.zeros((len(ids), frames, 4, 4, 3), np.uint8)
    videos[:, 0, 0, 0, 0] = ids
    return videos


def pairwise_reference(emb: np.ndarray, prompts: list[str]) -> dict[str, float]:
    """The paper's number per prompt: mean cosine similarity over all unordered pairs of its videos."""
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    out = {}
    for prompt in dict.fromkeys(prompts):
        idx = [i for i, p in enumerate(prompts) if p == prompt]
        out[prompt] = float(np.mean([unit[i] @ unit[j] for i, j in itertools.combinations(idx, 2)]))
    return out


# -- diversity --------------------------------------------------------------------------------------

def test_identical_videos_of_one_prompt_have_similarity_one() -> None:
    video = rendered("a red circle bouncing", [11])
    metric = Diversity()
    values = metric.score(batch(np.repeat(video, 3, axis=0), ["a red circle bouncing"] * 3))
    assert list(values) == ["world_probe_similarity"]
    np.testing.assert_allclose(values["world_probe_similarity"], 1.0, atol=1e-12)


def test_different_seeds_are_less_similar_than_copies_and_other_prompts_less_still() -> None:
    metric = Diversity()
    same = rendered("a blue square moving right", [1, 2, 3])
    other = rendered("a green triangle and a yellow circle falling", [1])
    emb = metric.video_embeddings(np.concatenate([same, other]))
    cos = F.normalize(emb, dim=1) @ F.normalize(emb, dim=1).T
    within = cos[:3, :3][~torch.eye(3, dtype=torch.bool)]
    assert within.max() < 1 - 1e-6 and within.min() > cos[:3, 3].max()


def test_known_embeddings_give_known_similarities() -> None:
    # frame averages: id 1 -> (1, 0, 0), id 2 -> (0, 1, 0), id 3 -> (1, 1, 0), id 4 -> (0, 0, 5); frames
    # are averaged before the cosine, as the paper says (normalising each frame first would turn id 3)
    table = {1: np.array([[2.0, 0, 0], [0, 0, 0]]), 2: np.array([[0, 1.0, 0], [0, 1.0, 0]]),
             3: np.array([[1.0, 2, 0], [1, 0, 0]]), 4: np.array([[0, 0, 5.0], [0, 0, 5]])}
    metric = Diversity()
    metric.embed = fake_embedder(table)
    out = metric.score(batch(id_videos([1, 2, 3, 4, 4]), ["a", "a", "a", "b", "c"]))
    r = 1 / np.sqrt(2)
    # a: cos(1,2)=0, cos(1,3)=cos(2,3)=1/sqrt2 -> per video (0+r)/2, (0+r)/2, (r+r)/2; b and c are alone
    np.testing.assert_allclose(out["world_probe_similarity"][:3], [r / 2, r / 2, r], atol=1e-12)
    assert np.isnan(out["world_probe_similarity"][3:]).all()


def test_similarity_to_others_matches_the_pairwise_definition() -> None:
    rng = np.random.default_rng(0)
    prompts = ["p0", "p1", "p2"] * 4
    emb = rng.normal(size=(12, 6))
    values = similarity_to_others(torch.tensor(emb), prompts)
    reference = pairwise_reference(emb, prompts)
    for prompt, expected in reference.items():
        idx = [i for i, p in enumerate(prompts) if p == prompt]
        assert values[idx].mean() == pytest.approx(expected, abs=1e-12)
    # equal videos per prompt: the mean over videos is the mean over prompts, Table 7's number
    assert values.mean() == pytest.approx(np.mean(list(reference.values())), abs=1e-12)


def test_prompts_split_across_updates_are_grouped_in_compute() -> None:
    rng = np.random.default_rng(1)
    ids = list(range(1, 10))
    table = {i: rng.normal(size=(3, 5)) for i in ids}
    prompts = ["x", "y", "x", "z", "y", "x", "z", "y", "z"]
    metric = Diversity()
    metric.embed = fake_embedder(table)
    metric.update(batch(id_videos(ids[:4], frames=3), prompts[:4]))
    metric.update(batch(id_videos(ids[4:], frames=3), prompts[4:]))
    values = metric.compute()["world_probe_similarity"]
    means = np.stack([table[i].mean(0) for i in ids])
    unit = means / np.linalg.norm(means, axis=1, keepdims=True)
    for i, prompt in enumerate(prompts):
        others = [j for j, p in enumerate(prompts) if p == prompt and j != i]
        assert values[i] == pytest.approx(np.mean([unit[i] @ unit[j] for j in others]), abs=1e-12)
    # score() sees one batch only: the first batch's "y" and "z" have no partner there
    alone = metric.score(batch(id_videos(ids[:4], frames=3), prompts[:4]))["world_probe_similarity"]
    assert np.isnan(alone[[1, 3]]).all() and not np.isnan(alone[[0, 2]]).any()
    metric.reset()
    assert metric.compute()["world_probe_similarity"].size == 0


def test_diversity_options_and_metadata() -> None:
    assert Diversity.higher_is_better == {"world_probe_similarity": False, "dino_vitb16_similarity": False}
    assert Diversity().higher_is_better == {"world_probe_similarity": False}
    assert Diversity.required_weights({}) == (PROBE_WEIGHTS,)
    assert Diversity.required_weights({"backbone": "dino"}) == (DINO_VITB16,)
    with pytest.raises(UsageError, match="metric.dino_diversity.backbone='clip' is not one of 'world_probe', 'dino'"):
        Diversity.required_weights({"backbone": "clip"})
    with pytest.raises(UsageError, match="needs its prompt"):
        Diversity().score(VideoBatch(id_videos([1]), [{"seed": 0}]))


def test_missing_dino_weights_name_path_and_origin_without_downloading(tmp_path, no_downloads) -> None:
    with pytest.raises(UsageError) as err:
        Diversity(backbone="dino", weights_dir=tmp_path)
    message = str(err.value)
    assert str(tmp_path / "timm" / "vit_base_patch16_224.dino.safetensors") in message
    assert "https://huggingface.co/timm/vit_base_patch16_224.dino" in message


def test_dino_architecture_builds_offline_and_embeds_frames(no_downloads) -> None:
    model = build_dino(DINO_ARCH)  # the real architecture, random weights
    assert model.num_features == 768 and model.pretrained_cfg["mean"] == (0.485, 0.456, 0.406)
    emb = vit_embedder(model.eval(), torch.device("cpu"))(np.zeros((1, 1, 32, 48, 3), np.uint8))
    assert emb.shape == (1, 1, 768)


def test_dino_backbone_loads_the_local_file(tmp_path, no_downloads, monkeypatch) -> None:
    # a small timm ViT stands in for ViT-B/16 so that the file is small; the load path is the same
    monkeypatch.setattr(diversity, "DINO_ARCH", "test_vit")
    torch.manual_seed(0)
    reference = build_dino("test_vit").eval()
    path = tmp_path / DINO_VITB16.relative_path
    path.parent.mkdir(parents=True)
    save_file(reference.state_dict(), str(path))
    metric = Diversity(backbone="dino", weights_dir=tmp_path)
    video = rendered("a purple square moving up", [4])
    videos = np.concatenate([video, video, rendered("a purple square moving up", [5])])
    out = metric.score(batch(videos, ["a purple square moving up"] * 3))
    assert list(out) == ["dino_vitb16_similarity"]
    values = out["dino_vitb16_similarity"]
    # videos 0 and 1 are copies: each one's mean over (copy, video 2) is the same
    assert values[0] == pytest.approx(values[1], abs=1e-12) and values.max() <= 1 + 1e-9
    expected = vit_embedder(reference, torch.device("cpu"))(videos).mean(1).double()
    np.testing.assert_allclose(metric.video_embeddings(videos).numpy(), expected.numpy(), atol=1e-6)
    save_file({"not": torch.zeros(1)}, str(path))
    with pytest.raises(UsageError, match="does not hold test_vit's weights.*huggingface.co/timm"):
        Diversity(backbone="dino", weights_dir=tmp_path)


# -- perceptual dynamics -----------------------------------------------------------------------------

def test_lpips_style_distance_is_lpips_baseline_formula() -> None:
    gen = torch.Generator().manual_seed(0)
    a = [torch.randn(3, c, s, s, generator=gen) for c, s in ((4, 8), (6, 4))]
    b = [torch.randn(3, c, s, s, generator=gen) for c, s in ((4, 8), (6, 4))]
    # the lpips package's own pieces: unit-normalised channels, squared differences, spatial mean
    expected = sum(lpips.spatial_average((lpips.normalize_tensor(x) - lpips.normalize_tensor(y)).square().sum(1, keepdim=True))
                   for x, y in zip(a, b)).flatten()
    torch.testing.assert_close(lpips_style_distance(a, b).float(), expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(lpips_style_distance(a, a), torch.zeros(3, dtype=torch.float64))


def test_world_probe_distance_is_zero_for_still_frames_and_grows_with_motion() -> None:
    metric = PerceptualDynamics(interval=5)
    still = rendered("a red square standing still", [2])
    shifted = still.copy()
    shifted[:, 5:] = np.roll(still[:, 5:], 2, axis=3)  # from frame 5 on, 2 px to the right
    moving = rendered("a red square moving right", [2])
    out = metric.score(batch(np.concatenate([still, shifted, moving]), ["p"] * 3))
    values = out["world_probe_lpips_style"]
    assert list(out) == ["world_probe_lpips_style"]
    assert values[0] == 0.0 and values[1] > 0 and values[2] > values[1]


def test_perceptual_dynamics_options_and_metadata() -> None:
    assert PerceptualDynamics.higher_is_better == {"world_probe_lpips_style": True, "lpips_alex": True}
    assert PerceptualDynamics().higher_is_better == {"world_probe_lpips_style": True}
    assert PerceptualDynamics.required_weights({"backbone": "lpips"}) == (ALEXNET,)
    assert PerceptualDynamics.required_weights({}) == (PROBE_WEIGHTS,)
    with pytest.raises(UsageError, match="metric.perceptual_dynamics.backbone='vgg' is not one of"):
        PerceptualDynamics(backbone="vgg")
    with pytest.raises(UsageError, match=r"metric.perceptual_dynamics.interval=0 is out of range; use a value >= 1"):
        PerceptualDynamics(interval=0)
    with pytest.raises(UsageError, match="interval 5 needs videos of at least 6 frames"):
        PerceptualDynamics().score(batch(np.zeros((1, 5, 32, 32, 3), np.uint8), ["p"]))


def test_missing_alexnet_weights_name_path_and_origin_without_downloading(tmp_path, no_downloads) -> None:
    with pytest.raises(UsageError) as err:
        PerceptualDynamics(backbone="lpips", weights_dir=tmp_path)
    message = str(err.value)
    assert str(tmp_path / "lpips" / "alexnet-owt-7be5be79.pth") in message
    assert "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth" in message


@pytest.fixture
def random_alexnet(tmp_path):
    """torchvision's AlexNet with random weights, its `features` saved where the metric looks."""
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.alexnet(weights=None).eval()
    path = tmp_path / ALEXNET.relative_path
    path.parent.mkdir(parents=True)
    torch.save({f"features.{k}": v for k, v in net.features.state_dict().items()}, path)
    return net


def test_lpips_backbone_equals_the_lpips_package_with_the_same_trunk(tmp_path, random_alexnet, no_downloads,
                                                                      monkeypatch) -> None:
    metric = PerceptualDynamics(backbone="lpips", interval=2, weights_dir=tmp_path)
    rng = np.random.default_rng(0)
    videos = rng.integers(0, 256, size=(2, 4, 40, 36, 3), dtype=np.uint8)
    videos[1] = videos[1, :1]  # a frozen video
    values = metric.score(batch(videos, ["p", "q"]))["lpips_alex"]
    assert values[1] == 0.0 and values[0] > 0
    # the reference: lpips builds its own network, with its trunk from torchvision (here: ours)
    import lpips.pretrained_networks as pn

    monkeypatch.setattr(pn.tv, "alexnet", lambda **kwargs: random_alexnet)
    reference = lpips.LPIPS(net="alex", verbose=False)
    x = torch.tensor(videos[0]).permute(0, 3, 1, 2).float() / 255
    expected = reference(x[:2], x[2:], normalize=True).flatten().mean()
    assert values[0] == pytest.approx(expected.item(), rel=1e-5)


def test_lpips_refuses_small_frames_and_wrong_files(tmp_path, random_alexnet) -> None:
    metric = PerceptualDynamics(backbone="lpips", interval=1, weights_dir=tmp_path)
    with pytest.raises(UsageError, match="at least 32x32"):
        metric.score(batch(np.zeros((1, 2, 16, 16, 3), np.uint8), ["p"]))
    torch.save({"classifier.1.weight": torch.zeros(1)}, tmp_path / ALEXNET.relative_path)
    with pytest.raises(UsageError, match="not an AlexNet state dict.*download.pytorch.org"):
        PerceptualDynamics(backbone="lpips", weights_dir=tmp_path)
    (tmp_path / ALEXNET.relative_path).write_bytes(b"garbage")
    with pytest.raises(UsageError, match="not a readable state dict"):
        PerceptualDynamics(backbone="lpips", weights_dir=tmp_path)
