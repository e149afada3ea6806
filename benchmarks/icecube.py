"""IceCube benchmark: simulator throughput and Kaggle-conversion speed and memory.

    python benchmarks/icecube.py --n-events 100000 --workers 2

Prints (1) simulated events/s and the minutes 100k events take, (2) conversion time relative to a
reference measured in the same run: reading the same parquet files with pyarrow and nothing else
(ratio = convert / read), and (3) the converter's peak resident memory (run in a subprocess)
against the raw data size, showing that memory is bounded by ``--step`` events, not by the input.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONVERT = """
import json, resource, sys, time
from physfm.data.convert import convert
t = time.perf_counter()
inputs, out, step, rows, shard = json.loads(sys.argv[1]), sys.argv[2], *map(int, sys.argv[3:6])
m, s = convert("kaggle", inputs, out, shard_events=shard, step=step, progress=False,
               reader_options={"read_rows": rows})
print(json.dumps({"seconds": time.perf_counter() - t, "events": s.events_written,
                  "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-events", type=int, default=100_000)
    ap.add_argument("--events-per-batch", type=int, default=10_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--step", type=int, default=5000, help="converter events per chunk")
    ap.add_argument("--shard-events", type=int, default=2000, help="events per output shard")
    ap.add_argument("--read-rows", type=int, default=1 << 18, help="converter pulse rows per parquet read")
    ap.add_argument("--dir", type=Path, default=None, help="work directory (default: a temporary one)")
    args = ap.parse_args()
    os.environ.setdefault("PHYSFM_TRACKING", "0")

    import pyarrow.parquet as pq

    from physfm.data.generate_icecube import generate_icecube

    with tempfile.TemporaryDirectory() as tmp:
        work = args.dir or Path(tmp)
        raw, out = work / "raw", work / "data"
        t, cpu0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime
        generate_icecube(
            raw, args.n_events, 1, events_per_batch=args.events_per_batch, workers=args.workers, progress=False
        )
        sim_s = time.perf_counter() - t
        sim_cpu = resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime - cpu0
        files = sorted((raw / "train").glob("*.parquet"))
        raw_mb = sum(f.stat().st_size for f in files) / 2**20
        n_pulses = sum(pq.ParquetFile(f).metadata.num_rows for f in files)

        t = time.perf_counter()  # reference: just read every pulse file and the meta file
        for f in files:
            pq.read_table(f).to_pandas()
        pq.read_table(raw / "train_meta.parquet")
        read_s = time.perf_counter() - t

        def run_convert(inputs: list[Path], dest: Path) -> dict:
            cmd = [
                sys.executable,
                "-c",
                CONVERT,
                json.dumps([str(f) for f in inputs]),
                str(dest),
                str(args.step),
                str(args.read_rows),
                str(args.shard_events),
            ]
            res = subprocess.run(cmd, check=True, capture_output=True, text=True)
            return json.loads(res.stdout.strip().splitlines()[-1])

        half = run_convert(files[: max(1, len(files) // 2)], work / "data_half")
        conv = run_convert(files, out)
        biggest_mb = max(f.stat().st_size for f in files) / 2**20

    print(
        f"simulate: {args.n_events} events ({n_pulses / args.n_events:.1f} pulses/event) in {sim_s:.1f} s "
        f"with {args.workers} worker(s) = {args.n_events / sim_s:.0f} events/s; "
        f"100k events take {1e5 / (args.n_events / sim_s) / 60:.1f} min; worker CPU time {sim_cpu:.0f} s "
        f"= {args.n_events / max(sim_cpu, 1e-9):.0f} events per CPU-second"
    )
    print(
        f"convert: {conv['seconds']:.1f} s = {conv['events'] / conv['seconds']:.0f} events/s; "
        f"plain pyarrow read {read_s:.1f} s; ratio convert/read = {conv['seconds'] / read_s:.1f}"
    )
    print(
        f"convert peak RSS {conv['max_rss_mb']:.0f} MB for {raw_mb:.0f} MB of pulse files "
        f"(largest {biggest_mb:.0f} MB, step {args.step} events); on half the files ({half['events']} events) "
        f"{half['max_rss_mb']:.0f} MB"
    )


if __name__ == "__main__":
    main()
