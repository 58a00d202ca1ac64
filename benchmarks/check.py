"""Wall time of ``lossdsl check``: one shipped spec, and 500 files (copies of the shipped specs).

    python benchmarks/check.py            # 3 runs of each
    python benchmarks/check.py --runs 5 --files 1000

Each run is a fresh ``python -m lossdsl check`` process timed by ``/usr/bin/time`` (wall seconds,
interpreter start-up and imports included: what a pre-commit hook or CI step waits for), or by the
clock around the process where ``/usr/bin/time`` is missing. ``lossdsl check`` imports no torch (the
static passes need none), so the imports are pydantic's and lark's. The targets (issue 16): under
0.5 s for one file, under 2 s for 500. The medians are compared with them.

The processes run as an installed lossdsl does: with bytecode caches (``PYTHONDONTWRITEBYTECODE`` is
dropped for them, and one untimed run first writes the caches and lark's grammar cache). Without
them every import compiles its module from source, about 0.1 s more.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPECS = sorted((ROOT / "specs").glob("*.loss"))
#: Wall seconds, by the issue: one file, and 500.
TARGET_ONE, TARGET_MANY = 0.5, 2.0


def timed_check(paths: list[str]) -> tuple[float, float | None]:
    """Wall and CPU (user + system) seconds of one ``lossdsl check`` process over ``paths`` (which must
    pass: exit 0); CPU None without ``/usr/bin/time``. On a busy machine the wall time is the larger."""
    command = [sys.executable, "-m", "lossdsl", "check", *paths]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    time_tool = shutil.which("time", path="/usr/bin")
    with tempfile.NamedTemporaryFile("r") as report:
        started = time.perf_counter()
        if time_tool:
            command = [time_tool, "-f", "%e %U %S", "-o", report.name, *command]
        done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
        elapsed = time.perf_counter() - started
        if done.returncode != 0:
            raise SystemExit(f"lossdsl check failed ({done.returncode}):\n{done.stdout}{done.stderr}")
        if not time_tool:
            return elapsed, None
        wall, user, system = map(float, report.read().strip().splitlines()[-1].split())
        return wall, user + system


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="processes per case (default 3)")
    parser.add_argument("--files", type=int, default=500, help="files in the many-files case (default 500)")
    args = parser.parse_args()
    if not SPECS:
        raise SystemExit("no specs/*.loss in this checkout")
    with tempfile.TemporaryDirectory() as folder:
        for index in range(args.files):  # the shipped specs, round and round
            source = SPECS[index % len(SPECS)]
            shutil.copyfile(source, Path(folder) / f"{index:04d}_{source.name}")
        cases = [(f"1 file ({SPECS[0].relative_to(ROOT)})", [str(SPECS[0])], TARGET_ONE),
                 (f"{args.files} files", [folder], TARGET_MANY)]
        timed_check([str(SPECS[0])])  # untimed: writes the bytecode and grammar caches
        print(f"lossdsl check, seconds of a fresh process, {args.runs} runs each (python {sys.version.split()[0]}, "
              f"load average {os.getloadavg()[0] if hasattr(os, 'getloadavg') else float('nan'):.1f} on {os.cpu_count()} cpus)")
        for label, paths, target in cases:
            runs = [timed_check(paths) for _ in range(args.runs)]
            median = statistics.median(wall for wall, _ in runs)
            cpu = [c for _, c in runs if c is not None]
            verdict = "meets" if median < target else "MISSES"
            print(f"  {label:<32} wall {'  '.join(f'{wall:.2f}' for wall, _ in runs)}   median {median:.2f} s"
                  + (f" (cpu median {statistics.median(cpu):.2f} s)" if cpu else "")
                  + f", target under {target:g} s: {verdict}")


if __name__ == "__main__":
    main()
