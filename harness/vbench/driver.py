"""Runs the official VBench on one export; `refinery vbench evaluate` starts it in `vbench.python`.

It imports nothing from Refinery, so it runs in a separate environment that has only torch and
vbench (whose pins conflict with Refinery's). It calls VBench's Python API with local=True (weights
from VBENCH_CACHE_DIR, never a download) and writes, beside VBench's `{name}_eval_results.json`,
`{name}_run.json` with the versions that produced it.

    python driver.py --videos DIR --output DIR --name NAME --mode MODE --device cuda
                     --dimensions DIM [DIM ...] [--full-info JSON] [--prompt-file JSON]
"""
import argparse
import json
import os
import sys
from importlib import metadata

# As a script, this file's folder comes first on sys.path; its sibling modules (export, evaluate,
# ...) must not shadow modules of the VBench environment.
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    sys.path.pop(0)


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--mode", required=True, choices=["vbench_standard", "custom_input"])
    parser.add_argument("--device", required=True)
    parser.add_argument("--dimensions", required=True, nargs="+")
    parser.add_argument("--full-info", default="")  # read by vbench_standard only
    parser.add_argument("--prompt-file")
    return parser.parse_args(argv)


def version(package):
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "unknown"


def main(argv=None):
    args = parse(argv)
    import torch
    from vbench import VBench

    prompts = {}
    if args.prompt_file:
        with open(args.prompt_file) as f:
            prompts = json.load(f)  # {file name under --videos: prompt}, VBench's --prompt_file
    VBench(torch.device(args.device), args.full_info, args.output).evaluate(
        videos_path=args.videos, name=args.name, prompt_list=prompts, dimension_list=args.dimensions,
        local=True, mode=args.mode)
    run = {"vbench": version("vbench"), "torch": torch.__version__, "python": sys.version.split()[0],
           "mode": args.mode, "device": args.device, "dimensions": args.dimensions}
    with open(os.path.join(args.output, f"{args.name}_run.json"), "w") as f:
        json.dump(run, f, indent=1)


if __name__ == "__main__":
    main()
