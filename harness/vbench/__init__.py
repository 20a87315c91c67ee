"""VBench itself, through the official `vbench` package (never a re-implementation of its models).

    refinery vbench export OUT [key=value ...]      a cell's videos under VBench's naming (export.py)
    refinery vbench evaluate DIR [key=value ...]    preflight, then the official package (evaluate.py)
    refinery vbench aggregate PATH [format=json]    Quality / Semantic / Total as VBench's leaderboard
                                                    computes them (scores.py)
    refinery vbench ingest DIR [RESULTS] [...]      VBench's scores into the store, for reports (ingest.py)

On a machine with a GPU and the weights:

1. An environment for VBench, apart from Refinery's (its pins: transformers==4.33.2, timm<=1.0.12,
   numpy<2, hence Python <= 3.11): `python3.11 -m venv vb && vb/bin/pip install torch vbench`, plus
   detectron2 built from source for object_class, multiple_objects, color and spatial_relationship.
2. The weights under `paths.weights` (or vbench.cache_dir / torch_home / hf_home): run
   `refinery vbench evaluate DIR vbench.python=vb/bin/python`; while anything is missing it starts
   nothing and lists every missing file with its path and origin.
3. `refinery vbench export OUT ...` (vbench.mode=vbench_standard and vbench.full_info=<the suite's
   VBench_full_info.json> for runs of VBench's own prompts, 5 samples each), then evaluate, then
   `refinery vbench ingest DIR` and `refinery report ... report.metrics=[vbench]`.

VBench's temporal_flickering protocol first keeps static clips out of 25 samples per prompt (its
RAFT static filter); an export holds the samples as generated, so that dimension reads them all.

Facts about VBench here were read from Vchitect/VBench v0.1.5 (vbench/__init__.py, vbench/utils.py,
scripts/constant.py, scripts/cal_final_score.py), and driver.py was run against vbench 0.1.5.
"""
