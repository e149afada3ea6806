"""Tracking cost: one small stage (`physfm convert --workers 1`) with MLflow off and on, in one run.

Each repeat runs the same command twice as a fresh process (the way Snakemake runs a job), once with
``PHYSFM_TRACKING=0`` and once with ``PHYSFM_TRACKING=1`` logging to a SQLite store created once
beforehand (as the workflow's ``onstart`` does with ``physfm tracking-init``), alternating which goes
first. It prints the minimum wall time of each (the machine may be shared: minima are the least
disturbed measurement), the seconds tracking adds and the ratio tracked / untracked. Target: at most
0.5 s added. The first tracked run also starts physfm's tracking server (see physfm/tracking.py),
which the later ones reuse, as the later jobs of a study do; its time is printed too.

Run it from the repository root: the stage runs as ``python -m physfm``, which imports the physfm
of the current directory.

Input: 20 000 JetClass-schema jets in 8 ROOT files, as in issue 17 (Pythia 8 jets from
``benchmarks/convert.py``, replicated by azimuthal rotations; cached in --cache).

    python benchmarks/tracking.py --repeats 5
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from convert import LABELS, pythia_jets, replicate  # noqa: E402  (benchmarks/convert.py)


def stage_command(files: list[Path], out: Path) -> list[str]:
    return [
        sys.executable, "-m", "physfm", "convert", "--format", "jetclass", "--input", str(files[0].parent / "*.root"),
        "--out", str(out), "--labels", ",".join(LABELS), "--workers", "1", "--shard-events", "10000",
        "--no-progress", "--tag", "rule=convert", "--tag", "study=bench",
    ]  # fmt: skip


def timed(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-jets", type=int, default=20_000)
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--pythia-jets", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "physfm-bench")
    args = ap.parse_args()

    os.environ["PHYSFM_TRACKING"] = "0"
    sources = pythia_jets(args.cache, args.pythia_jets, seed=1)
    per_file = -(-args.n_jets // args.files)
    files = replicate(sources, args.cache / f"tracking_{args.n_jets}_{args.files}", args.n_jets, per_file, seed=2)
    size = sum(p.stat().st_size for p in files) / 2**20
    print(f"input: {args.n_jets} jets in {len(files)} files, {size:.0f} MiB; physfm convert --workers 1")

    with tempfile.TemporaryDirectory() as tmp:
        base = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
        base.update({"PHYSFM_RESULTS": str(Path(tmp) / "results"), "PHYSFM_EXPERIMENT": "bench"})
        off = {**base, "PHYSFM_TRACKING": "0"}
        on = {**base, "PHYSFM_TRACKING": "1"}
        subprocess.run([sys.executable, "-m", "physfm", "tracking-init"], env=on, check=True, stdout=subprocess.DEVNULL)
        times: dict[str, list[float]] = {"off": [], "on": []}
        for r in range(args.repeats):
            order = ("off", "on") if r % 2 == 0 else ("on", "off")
            for mode in order:
                out = Path(tmp) / f"out_{mode}"
                shutil.rmtree(out, ignore_errors=True)
                times[mode].append(timed(stage_command(files, out), off if mode == "off" else on))
            print(f"  repeat {r}: tracking off {times['off'][-1]:.2f} s   on {times['on'][-1]:.2f} s")
    t_off, t_on = min(times["off"]), min(times["on"])
    print(f"PHYSFM_TRACKING=0 : {t_off:.2f} s (min of {args.repeats})")
    print(f"PHYSFM_TRACKING=1 : {t_on:.2f} s (min of {args.repeats}; the first tracked run, which starts the")
    print(f"                    tracking server when none is running: {times['on'][0]:.2f} s)")
    print(
        f"tracking adds {t_on - t_off:.2f} s; ratio tracked / untracked = {t_on / t_off:.2f}  (target: <= 0.5 s added)"
    )
    print("load average (1, 5, 15 min): " + ", ".join(f"{x:.2f}" for x in os.getloadavg()))


if __name__ == "__main__":
    main()
