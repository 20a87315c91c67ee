"""Dynamics, temporal flicker and compute metrics: agreement with scikit-image and hand values."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from omegaconf import OmegaConf

from harness.errors import UsageError
from harness.experiment.pipeline import check_metric_weights
from harness.engine.registry import METRICS
from harness.engine.metric import Metric, VideoBatch, WeightFile
from metrics.compute import LEDGER_KEYS, Compute
from metrics.dynamics import PSNR_CAP_DB, Dynamics, psnr, ssim
from metrics.temporal_flicker import TemporalFlicker


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tensors are tiny and the machine is shared; restored for other test modules."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def random_frames(rng: np.random.Generator, n: int, h: int, w: int) -> np.ndarray:
    return rng.integers(0, 256, size=(n, h, w, 3), dtype=np.uint8)


def smooth_frames(rng: np.random.Generator, n: int, h: int, w: int) -> np.ndarray:
    """Low-frequency images with noise: local variances near C2, where cancellation would show."""
    yy, xx = np.mgrid[0:h, 0:w]
    out = np.empty((n, h, w, 3), dtype=np.uint8)
    for i in range(n):
        fx, fy, ph = rng.uniform(0.02, 0.2, size=3)
        base = 128 + 90 * np.sin(fx * xx + ph * 10) * np.cos(fy * yy)
        img = base[..., None] + rng.normal(0, 3, size=(h, w, 3)) + np.array([0, 10, -10])
        out[i] = np.clip(np.round(img), 0, 255).astype(np.uint8)
    return out


def sk_ssim(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.array([structural_similarity(x, y, channel_axis=-1, data_range=255)
                     for x, y in zip(a, b)])


def sk_psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.array([peak_signal_noise_ratio(x, y, data_range=255) for x, y in zip(a, b)])


def batch_of(videos: np.ndarray, records: list[dict] | None = None) -> VideoBatch:
    return VideoBatch(videos=videos, records=records or [{} for _ in videos])


@pytest.mark.parametrize("shape", [(32, 32), (40, 48), (7, 9), (23, 17)])
@pytest.mark.parametrize("kind", ["random", "smooth"])
def test_ssim_psnr_match_skimage(shape: tuple[int, int], kind: str) -> None:
    rng = np.random.default_rng([*shape, kind == "smooth"])  # str hash() varies per process
    make = random_frames if kind == "random" else smooth_frames
    a, b = make(rng, 6, *shape), make(rng, 6, *shape)
    b[0] = np.clip(a[0].astype(int) + rng.integers(-4, 5, a[0].shape), 0, 255)  # a near pair
    got_ssim = ssim(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    got_psnr = psnr(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    np.testing.assert_allclose(got_ssim, sk_ssim(a, b), rtol=0, atol=1e-4)
    np.testing.assert_allclose(got_psnr, sk_psnr(a, b), rtol=0, atol=1e-4)


@pytest.mark.parametrize("tile", [1, 4, 7])  # 17 x 34 window positions: tiles that do not divide them
def test_tiled_windows_match_skimage(monkeypatch: pytest.MonkeyPatch, tile: int) -> None:
    monkeypatch.setattr("metrics.dynamics._TILE", tile)
    rng = np.random.default_rng(11)
    a, b = smooth_frames(rng, 3, 23, 40), smooth_frames(rng, 3, 23, 40)
    np.testing.assert_allclose(ssim(torch.from_numpy(a), torch.from_numpy(b)).numpy(), sk_ssim(a, b), rtol=0, atol=1e-4)


def test_float_input_matches_uint8() -> None:
    rng = np.random.default_rng(1)
    a, b = random_frames(rng, 3, 16, 16), random_frames(rng, 3, 16, 16)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    assert torch.allclose(ssim(ta, tb), ssim(ta.float(), tb.float()), atol=1e-12)
    assert torch.allclose(psnr(ta, tb), psnr(ta.double(), tb.double()), atol=1e-12)


def test_identical_frames_give_ssim_one_and_psnr_cap() -> None:
    a = torch.from_numpy(random_frames(np.random.default_rng(2), 4, 20, 24))
    assert torch.allclose(ssim(a, a), torch.ones(4, dtype=torch.float64), atol=1e-12)
    assert torch.equal(psnr(a, a), torch.full((4,), PSNR_CAP_DB, dtype=torch.float64))


def test_known_shift_gives_hand_computed_psnr() -> None:
    a = random_frames(np.random.default_rng(3), 2, 10, 12) // 2  # stays in range after +d
    shifts = np.array([3, 10], dtype=np.uint8)
    b = a + shifts[:, None, None, None]
    expected = 10 * np.log10(255.0**2 / shifts.astype(float) ** 2)  # MSE = d**2 everywhere
    got = psnr(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9)


def test_ssim_rejects_small_or_mismatched_images() -> None:
    a = torch.zeros(1, 6, 6, 3, dtype=torch.uint8)
    with pytest.raises(ValueError, match="7x7"):
        ssim(a, a)
    with pytest.raises(ValueError, match="equal shapes"):
        ssim(torch.zeros(1, 8, 8, 3), torch.zeros(1, 8, 9, 3))


def moving_video(rng: np.random.Generator, frames: int, h: int = 24, w: int = 24) -> np.ndarray:
    """A smooth texture translating 2 pixels per frame."""
    canvas = smooth_frames(rng, 1, h, w + 2 * frames)[0]
    return np.stack([canvas[:, 2 * t : 2 * t + w] for t in range(frames)])


def test_dynamics_orders_static_below_moving() -> None:
    rng = np.random.default_rng(4)
    static = np.repeat(smooth_frames(rng, 1, 24, 24), 8, axis=0)
    videos = np.stack([static, moving_video(rng, 8)])
    out = Dynamics().score(batch_of(videos))
    assert out["ssim"][0] == pytest.approx(1.0, abs=1e-12)
    assert out["psnr"][0] == PSNR_CAP_DB
    assert out["ssim"][1] < out["ssim"][0] and out["psnr"][1] < out["psnr"][0]


def test_dynamics_averages_pairs_like_skimage() -> None:
    rng = np.random.default_rng(5)
    videos = np.stack([moving_video(rng, 9), random_frames(rng, 9, 24, 24)])
    out = Dynamics(interval=3).score(batch_of(videos))
    for v, video in enumerate(videos):
        a, b = video[:-3], video[3:]
        assert out["ssim"][v] == pytest.approx(sk_ssim(a, b).mean(), abs=1e-4)
        assert out["psnr"][v] == pytest.approx(sk_psnr(a, b).mean(), abs=1e-4)


def test_dynamics_honours_interval() -> None:
    rng = np.random.default_rng(6)
    period = random_frames(rng, 5, 16, 16)
    video = np.concatenate([period, period, period])[None]  # 15 frames, period 5
    at5 = Dynamics(interval=5).score(batch_of(video))
    at2 = Dynamics(interval=2).score(batch_of(video))
    assert at5["ssim"][0] == pytest.approx(1.0, abs=1e-12)
    assert at5["psnr"][0] == PSNR_CAP_DB
    assert at2["ssim"][0] < 0.5 and at2["psnr"][0] < 20


def test_dynamics_default_interval_is_five_and_short_videos_fail() -> None:
    assert Dynamics().interval == 5
    video = np.zeros((1, 5, 16, 16, 3), dtype=np.uint8)
    with pytest.raises(UsageError, match=r"interval 5.*got 5"):
        Dynamics().score(batch_of(video))
    with pytest.raises(UsageError, match="metric.dynamics.interval=0 is out of range"):
        Dynamics(interval=0)


@pytest.mark.parametrize("frames_per_block", [7, 3])  # one whole video; runs of 2 pairs (+2 frames)
def test_dynamics_blocks_do_not_change_values(monkeypatch: pytest.MonkeyPatch, frames_per_block: int) -> None:
    rng = np.random.default_rng(7)
    videos = random_frames(rng, 3 * 7, 16, 16).reshape(3, 7, 16, 16, 3)
    whole = Dynamics(interval=2).score(batch_of(videos))
    monkeypatch.setattr("metrics.dynamics._CHUNK_ELEMENTS", frames_per_block * 16 * 16 * 3)
    blocks = list(Dynamics(interval=2)._blocks(videos))
    assert len(blocks) == (3 if frames_per_block == 7 else 9)  # 5 pairs: runs of 2, 2, 1
    chunked = Dynamics(interval=2).score(batch_of(videos))
    # PSNR sums squared 8-bit differences, exact in float32: equal. SSIM's window means are float32
    # matrix products whose blocking follows the matrix shapes, which the blocks change: equal to float32
    # rounding (measured 1.3e-10 on values of about 1e-2; float32 resolves 6e-8 at 1).
    np.testing.assert_array_equal(chunked["psnr"], whole["psnr"])
    np.testing.assert_allclose(chunked["ssim"], whole["ssim"], rtol=0, atol=1e-6)


def test_temporal_flicker_extremes_and_hand_value() -> None:
    rng = np.random.default_rng(8)
    constant = np.full((6, 8, 8, 3), 77, dtype=np.uint8)
    alternating = np.stack([np.full((8, 8, 3), 255 * (t % 2), dtype=np.uint8) for t in range(6)])
    noisy = random_frames(rng, 6, 8, 8)
    out = TemporalFlicker().score(batch_of(np.stack([constant, alternating, noisy])))["score"]
    assert out[0] == 1.0
    assert out[1] == 0.0
    pair_means = [np.mean(np.abs(noisy[t + 1].astype(float) - noisy[t])) for t in range(5)]
    assert out[2] == pytest.approx((255 - np.mean(pair_means)) / 255, abs=1e-12)


def test_temporal_flicker_rejects_single_frame() -> None:
    with pytest.raises(UsageError, match="at least 2 frames"):
        TemporalFlicker().score(batch_of(np.zeros((1, 1, 8, 8, 3), dtype=np.uint8)))


def ledger(seed: int) -> dict[str, float]:
    return {k: float(seed * 10 + i) for i, k in enumerate(LEDGER_KEYS)}


def test_compute_passes_ledger_through() -> None:
    records = [{"ledger": ledger(1)}, {"ledger": ledger(2)}]
    out = Compute().score(batch_of(np.zeros((2, 1, 8, 8, 3), dtype=np.uint8), records))
    assert set(out) == set(LEDGER_KEYS)
    for k in LEDGER_KEYS:
        np.testing.assert_array_equal(out[k], [ledger(1)[k], ledger(2)[k]])
    assert Compute.higher_is_better == {k: k == "fps" for k in LEDGER_KEYS}
    assert Compute.needs == ("ledger",)


def test_compute_rejects_missing_ledger() -> None:
    records = [{"ledger": ledger(1)}, {"index": 7}]
    with pytest.raises(UsageError, match="video 7 has no ledger"):
        Compute().score(batch_of(np.zeros((2, 1, 8, 8, 3), dtype=np.uint8), records))
    incomplete = {k: v for k, v in ledger(1).items() if k != "fps"}
    with pytest.raises(UsageError, match="fps"):
        Compute().score(batch_of(np.zeros((1, 1, 8, 8, 3), dtype=np.uint8),
                                 [{"ledger": incomplete}]))


def test_lifecycle_keeps_update_order_and_resets() -> None:
    rng = np.random.default_rng(9)
    first = np.stack([np.full((7, 12, 12, 3), 5, dtype=np.uint8), random_frames(rng, 7, 12, 12)])
    second = random_frames(rng, 7, 12, 12)[None]
    for metric in (Dynamics(interval=2), TemporalFlicker()):
        metric.update(batch_of(first))
        metric.update(batch_of(second))
        values = metric.compute()
        expected = {k: np.concatenate([metric.score(batch_of(first))[k],
                                       metric.score(batch_of(second))[k]]) for k in values}
        for k, v in values.items():
            assert v.dtype == np.float64 and v.shape == (3,)
            np.testing.assert_array_equal(v, expected[k])
        metric.reset()
        assert all(len(v) == 0 for v in metric.compute().values())
    compute = Compute()
    compute.update(batch_of(np.zeros((1, 1, 8, 8, 3), np.uint8), [{"ledger": ledger(1)}]))
    compute.update(batch_of(np.zeros((2, 1, 8, 8, 3), np.uint8),
                            [{"ledger": ledger(2)}, {"ledger": ledger(3)}]))
    np.testing.assert_array_equal(compute.compute()["nfe"], [10.0, 20.0, 30.0])
    compute.reset()
    assert compute.compute()["nfe"].size == 0


def test_metric_metadata() -> None:
    assert Dynamics.name == "dynamics" and Dynamics.higher_is_better == {"ssim": False, "psnr": False}
    assert TemporalFlicker.name == "temporal_flicker"
    assert TemporalFlicker.higher_is_better == {"score": True}
    assert Compute.name == "compute"
    for cls in (Dynamics, TemporalFlicker, Compute):
        assert cls.description and "\n" not in cls.description and cls.version


class NeedsWeights(Metric):
    name = "needs_weights"
    version = "1"
    higher_is_better = {"x": True}
    weights = (WeightFile("backbone/net.safetensors", "https://example.org/net"), WeightFile("head.pt", "the head's origin"))


def test_missing_metric_weights_are_listed_with_their_origin_before_any_compute(tmp_path, monkeypatch):
    (tmp_path / "head.pt").write_bytes(b"present")
    with pytest.raises(UsageError) as err:
        NeedsWeights(weights_dir=tmp_path)
    message = str(err.value)
    assert f"{tmp_path}/backbone/net.safetensors (from https://example.org/net)" in message
    assert "head.pt" not in message and "\n" not in message
    # the run path checks the same files while resolving the config, before it generates anything
    monkeypatch.setitem(METRICS._entries, "needs_weights", "tests.test_metrics_basic:NeedsWeights")
    with pytest.raises(UsageError, match="net.safetensors"):
        check_metric_weights(OmegaConf.create({"needs_weights": {}}), tmp_path)
    (tmp_path / "backbone").mkdir()
    (tmp_path / "backbone" / "net.safetensors").write_bytes(b"present")
    check_metric_weights(OmegaConf.create({"needs_weights": {}}), tmp_path)
    assert NeedsWeights(weights_dir=tmp_path).weight_path(NeedsWeights.weights[1]) == tmp_path / "head.pt"
