"""`make bench`: every benchmark in turn; copy the figures into RESULTS.md with the date."""
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
for script in ("bench_rollout.py", "bench_methods.py", "bench_rerun.py", "bench_world_bench.py", "bench_dynamics.py",
               "bench_train.py"):
    print(f"== {script}", flush=True)
    subprocess.run([sys.executable, str(HERE / script)], check=True)
