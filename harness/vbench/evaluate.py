"""Run the official VBench on an export, after a preflight that refuses to start while anything is wrong.

The preflight checks, before any model is loaded: the dimensions against the export's mode, the
interpreter named by `vbench.python`, every weight file the dimensions read (each missing one is
listed with its expected path and origin: VBench would otherwise try to download it with wget), that
the `vbench` package is importable there, and every video VBench will read (present, decodable,
one frame size throughout).

The weight layout is VBench's own with `local=True` (vbench/utils.py, init_submodules), under three
configured folders: `vbench.cache_dir` (VBENCH_CACHE_DIR), `vbench.torch_home` (TORCH_HOME: DINO's
hub code reads its checkpoint from hub/checkpoints/ whatever VBench passes it) and `vbench.hf_home`
(HF_HOME: bert-base-uncased for Tag2Text and GRiT). The run itself is offline: HF_HUB_OFFLINE and
TRANSFORMERS_OFFLINE are set, and a `wget` that fails at once comes first on PATH.
"""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from omegaconf import DictConfig

from harness.errors import UsageError
from harness.engine.devices import gpus_for, visible_gpus
from harness.store.files import atomic_write_json, read_json
from harness.store.video_format import ffmpeg
from harness.vbench.export import SAMPLES_PER_PROMPT, Export, read_export
from harness.vbench.scores import STANDARD, dimensions_for, read_full_info
from harness.vbench.shards import SHARDS_DIR, merge, merged_run_info, plan_jobs, run_jobs
from harness.engine.metric import WeightFile

DRIVER = Path(__file__).with_name("driver.py")
RESULT_PREFIX = "refinery"


def _in(root: str, relative_path: str, origin: str) -> tuple[str, WeightFile]:
    """A file under one of the three folders: root is "cache", "torch" or "hf"."""
    return root, WeightFile(relative_path, origin)


_CLIP = "openaipublic.azureedge.net/clip/models/"
_HF = "huggingface.co/OpenGVLab/VBench_Used_Models/resolve/main/"
_DINO = "dl.fbaipublicfiles.com/dino/dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth"
_DINO_REPO = "git clone https://github.com/facebookresearch/dino"
_BERT = _in("hf", "hub/models--bert-base-uncased/refs/main",
            "huggingface.co/bert-base-uncased: `HF_HOME=<vbench.hf_home> huggingface-cli download "
            "bert-base-uncased`")
_CLIP_B = _in("cache", "clip_model/ViT-B-32.pt",
              _CLIP + "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt")
_GRIT = (_in("cache", "grit_model/grit_b_densecap_objectdet.pth", _HF + "grit_b_densecap_objectdet.pth"), _BERT)
_VICLIP = (_in("cache", "ViCLIP/ViClip-InternVid-10M-FLT.pth", _HF + "ViClip-InternVid-10M-FLT.pth"),
           _in("cache", "ViCLIP/bpe_simple_vocab_16e6.txt.gz",
               "clip/bpe_simple_vocab_16e6.txt.gz inside the openai-clip or open_clip_torch package: copy it"))
GRIT_DIMENSIONS = ("object_class", "multiple_objects", "color", "spatial_relationship")
REQUIRED: dict[str, tuple[tuple[str, WeightFile], ...]] = {
    "subject_consistency": (
        *(_in("cache", f"dino_model/facebookresearch_dino_main/{f}", _DINO_REPO)
          for f in ("hubconf.py", "vision_transformer.py", "utils.py")),
        # VBench checks for this copy (and wgets it when absent) but DINO's hubconf loads the next one
        _in("cache", "dino_model/dino_vitbase16_pretrain.pth", _DINO),
        _in("torch", "hub/checkpoints/dino_vitbase16_pretrain.pth", _DINO),
    ),
    "background_consistency": (_CLIP_B,),
    "temporal_flickering": (),
    "motion_smoothness": (_in("cache", "amt_model/amt-s.pth",
                              "huggingface.co/lalala125/AMT/resolve/main/amt-s.pth"),),
    "dynamic_degree": (_in("cache", "raft_model/models/raft-things.pth",
                           "dl.dropboxusercontent.com/s/4j4z58wuv8o0mfz/models.zip, unzipped into raft_model/"),),
    "aesthetic_quality": (
        _in("cache", "clip_model/ViT-L-14.pt",
            _CLIP + "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836/ViT-L-14.pt"),
        _in("cache", "aesthetic_model/emb_reader/sa_0_4_vit_l_14_linear.pth",
            "github.com/LAION-AI/aesthetic-predictor/raw/main/sa_0_4_vit_l_14_linear.pth"),
    ),
    "imaging_quality": (_in("cache", "pyiqa_model/musiq_spaq_ckpt-358bb6af.pth",
                            "github.com/chaofengc/IQA-PyTorch/releases/download/v0.1-weights/"
                            "musiq_spaq_ckpt-358bb6af.pth"),),
    **{dim: _GRIT for dim in GRIT_DIMENSIONS},
    "human_action": (_in("cache", "umt_model/l16_ptk710_ftk710_ftk400_f16_res224.pth",
                         _HF + "l16_ptk710_ftk710_ftk400_f16_res224.pth"),),
    "scene": (_in("cache", "caption_model/tag2text_swin_14m.pth",
                  "huggingface.co/spaces/xinyu1205/recognize-anything/resolve/main/tag2text_swin_14m.pth"), _BERT),
    "appearance_style": (_CLIP_B,),
    "temporal_style": _VICLIP, "overall_consistency": _VICLIP,
}
_WGET_SHIM = """#!/bin/sh
echo "refinery: VBench tried to download ($*); place the file at the path the preflight names" >&2
exit 1
"""


@dataclass(frozen=True)
class Settings:
    """The `vbench:` block of the config, resolved."""

    python: str
    device: str
    cache_dir: Path
    torch_home: Path
    hf_home: Path
    full_info: Path | None
    dimensions: list[str] | None
    workers: int | None = None  # VBench processes, one per GPU; None: every visible GPU (1 on the CPU)

    @classmethod
    def from_config(cls, cfg: DictConfig) -> Settings:
        v = cfg.vbench
        return cls(v.python or sys.executable, v.device, Path(v.cache_dir), Path(v.torch_home),
                   Path(v.hf_home), Path(v.full_info) if v.full_info else None,
                   list(v.dimensions) if v.dimensions else None, v.get("workers"))

    def gpus(self) -> list[str | None]:
        """Each worker's CUDA_VISIBLE_DEVICES (None on the CPU)."""
        on_gpu = self.device.startswith("cuda")
        workers = self.workers or (max(1, len(visible_gpus())) if on_gpu else 1)
        return gpus_for(on_gpu, workers, "vbench.workers")

    def root(self, name: str) -> Path:
        return {"cache": self.cache_dir, "torch": self.torch_home, "hf": self.hf_home}[name]

    def environment(self) -> dict[str, str]:
        """Set before Python starts: VBench reads VBENCH_CACHE_DIR, and huggingface_hub its
        variables, at import time."""
        return {**os.environ, "VBENCH_CACHE_DIR": str(self.cache_dir.resolve()),
                "TORCH_HOME": str(self.torch_home.resolve()), "HF_HOME": str(self.hf_home.resolve()),
                "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


@dataclass(frozen=True)
class Plan:
    export: Export
    dimensions: list[str]
    command: list[str]
    results: Path  # the file VBench will write


def missing_weights(dimensions: list[str], settings: Settings) -> list[str]:
    """'path (for dims; from origin)' for every missing file, each once, in dimension order."""
    needs: dict[Path, tuple[list[str], str]] = {}
    for dim in dimensions:
        for root, weight in REQUIRED[dim]:
            path = settings.root(root) / weight.relative_path
            needs.setdefault(path, ([], weight.origin))[0].append(dim)
    return [f"{path} (for {', '.join(dims)}; from {origin})"
            for path, (dims, origin) in needs.items() if not path.is_file()]


def preflight(export_dir: Path, settings: Settings) -> Plan:
    """Everything `run` needs, checked; a UsageError names the first problem found."""
    export = read_export(export_dir)
    dims = dimensions_for(export.mode, settings.dimensions)
    expected = _expected_videos(export, dims, settings.full_info)
    python = _interpreter(settings.python)
    missing = missing_weights(dims, settings)
    if missing:
        raise UsageError(f"VBench needs {len(missing)} weight files that are missing: {'; '.join(missing)}; "
                         "place each at its path (vbench.cache_dir, vbench.torch_home and vbench.hf_home "
                         "set the folders)")
    _check_packages(python, settings, dims)
    check_videos(export.video_dir, expected, only_expected=export.mode != STANDARD)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    name = f"{RESULT_PREFIX}-{stamp}"
    command = [python, str(DRIVER), "--videos", str(export.video_dir.resolve()),
               "--output", str(export.result_dir.resolve()), "--name", name, "--mode", export.mode,
               "--device", settings.device, "--dimensions", *dims]
    if settings.full_info is not None:
        command += ["--full-info", str(settings.full_info.resolve())]
    if export.mode != STANDARD:
        command += ["--prompt-file", str(export.prompt_file.resolve())]
    return Plan(export, dims, command, export.result_dir / f"{name}_eval_results.json")


def run(plan: Plan, settings: Settings) -> Path:
    """Run VBench (hours on a GPU for the full suite); its output streams to this terminal. With
    several GPUs (settings.gpus()), one VBench call per GPU and their results merged (shards.py)."""
    gpus = settings.gpus()
    with tempfile.TemporaryDirectory(prefix="refinery-offline-") as shim:
        wget = Path(shim) / "wget"
        wget.write_text(_WGET_SHIM)
        wget.chmod(0o755)
        env = settings.environment()
        env["PATH"] = f"{shim}{os.pathsep}{env.get('PATH', '')}"
        if len(gpus) > 1:
            return _run_sharded(plan, settings, gpus, env)
        print(f"running: {shlex.join(plan.command)}", flush=True)
        code = subprocess.run(plan.command, env=env).returncode
    if code != 0:
        raise UsageError(f"VBench exited with status {code} (its output is above); nothing was written "
                         f"to {plan.results}")
    if not plan.results.is_file():
        raise UsageError(f"VBench finished without writing {plan.results}; see its output above")
    return plan.results


def _run_sharded(plan: Plan, settings: Settings, gpus: list[str | None], env: dict[str, str]) -> Path:
    export = plan.export
    name = plan.command[plan.command.index("--name") + 1]
    jobs = plan_jobs(plan.dimensions, sorted(os.listdir(export.video_dir)), len(gpus))
    prompts = read_json(export.prompt_file) if export.mode != STANDARD else None
    print(f"running VBench in {len(gpus)} workers ({', '.join(g or 'cpu' for g in gpus)}), "
          f"{len(jobs)} calls: {shlex.join(plan.command)}", flush=True)
    done = run_jobs(plan.command, export.path, export.video_dir, name, jobs, gpus, env, prompts)
    merged = merge(done, export.video_dir.resolve(), export.mode, settings.full_info)
    atomic_write_json(plan.results, {d: merged[d] for d in plan.dimensions})
    merged_run_info(done, name, len(gpus), plan.results.parent)
    shutil.rmtree(export.path / SHARDS_DIR)
    return plan.results


def _interpreter(python: str) -> str:
    found = shutil.which(python)
    if found is None:
        raise UsageError(f"vbench.python={python} is not an executable; name the interpreter of the "
                         "environment where `pip install vbench` was run")
    return found


def _check_packages(python: str, settings: Settings, dims: list[str]) -> None:
    """vbench, and detectron2 for the GRiT dimensions (not on PyPI, so not among vbench's requirements)."""
    packages = {"vbench": "pip install vbench (Python <= 3.11)"}
    if set(dims) & set(GRIT_DIMENSIONS):
        packages["detectron2"] = "build it from github.com/facebookresearch/detectron2 for that torch"
    # find_spec locates a package without importing it: importing vbench runs its code
    probe = "import importlib.util as u, sys; print(' '.join(p for p in sys.argv[1:] if u.find_spec(p) is None))"
    done = subprocess.run([python, "-c", probe, *packages], env=settings.environment(), capture_output=True,
                          text=True)
    missing = done.stdout.split() if done.returncode == 0 else list(packages)
    if missing:
        raise UsageError(f"{python} lacks {', '.join(missing)}: {'; '.join(packages[p] for p in missing)}; "
                         "or set vbench.python to an interpreter that has it")


def _expected_videos(export: Export, dims: list[str], full_info: Path | None) -> list[str]:
    """The file names VBench will read from the export's videos/ folder."""
    if export.mode != STANDARD:
        prompts = read_json(export.prompt_file) if export.prompt_file.is_file() else None
        if not isinstance(prompts, dict) or not all(isinstance(v, str) for v in prompts.values()):
            raise UsageError(f"{export.prompt_file} is missing or not {{file name: prompt}}; "
                             "export the cell again")
        return list(prompts)
    if full_info is None:
        raise UsageError("this export is in vbench_standard mode: set vbench.full_info to VBench_full_info.json "
                         "(inside the vbench package)")
    wanted = set(dims)
    names = [f"{prompt}-{i}.mp4" for prompt, prompt_dims in read_full_info(full_info) if prompt_dims & wanted
             for i in range(SAMPLES_PER_PROMPT)]
    return list(dict.fromkeys(names))


def check_videos(folder: Path, expected: list[str], only_expected: bool) -> None:
    """Every expected video is there and decodes, and all share one frame size; when only_expected,
    nothing else is there either (VBench's custom_input mode reads every file of the folder)."""
    if not folder.is_dir():
        raise UsageError(f"{folder} is missing; export the cell again")
    present = sorted(p.name for p in folder.iterdir())
    other = [n for n in present if not n.endswith(".mp4")]
    if other:
        raise UsageError(f"{folder / other[0]} is not an mp4; VBench takes every video's suffix from the first "
                         "file it lists, so the folder must hold only the exported videos")
    missing = [n for n in expected if n not in set(present)]
    if missing:
        raise UsageError(f"{len(missing)} of the {len(expected)} videos VBench will read are missing, e.g. "
                         f"{folder / missing[0]}; generate them (VBench's suite: {SAMPLES_PER_PROMPT} per prompt) "
                         "and export again")
    extra = [n for n in present if n not in set(expected)] if only_expected else []
    if extra:
        raise UsageError(f"{folder / extra[0]} has no prompt in prompts.json; remove it or export the cell again")
    first: tuple[Path, tuple[int, int]] | None = None
    for name in expected:
        size = probe_video(folder / name)
        if first is None:
            first = (folder / name, size)
        elif size != first[1]:
            raise UsageError(f"{folder / name} has frames of {size[0]}x{size[1]} but {first[0]} has "
                             f"{first[1][0]}x{first[1][1]}; one evaluation needs one frame size")


def probe_video(path: Path) -> tuple[int, int]:
    """(width, height) of a video that decodes to at least one frame, all frames that size."""
    reader = ffmpeg().read_frames(str(path))
    try:
        width, height = next(reader)["size"]
        frames = 0
        for frame in reader:
            if len(frame) != width * height * 3:
                raise UsageError(f"{path} has frames of different sizes; export it again")
            frames += 1
    except (OSError, RuntimeError, StopIteration) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UsageError(f"{path} is unreadable ({reason}); export it again") from None
    finally:
        reader.close()
    if frames == 0:
        raise UsageError(f"{path} has no frames; export it again")
    return width, height
