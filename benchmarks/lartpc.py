"""LArTPC benchmark: simulator throughput, PILArNet-M conversion speed, patching speed.

    python benchmarks/lartpc.py --n-events 400

Prints (1) simulated events and points per CPU-second (one process; ``time.process_time``, so a
busy machine inflates it less than wall time), (2) conversion time relative to a reference
measured in the same run: reading the same HDF5 files' ``point`` and ``cluster`` arrays with h5py
and nothing else (ratio = convert / read), and (3) patching (FPS + ball query, plain torch, CPU)
per event relative to one brute-force pairwise-distance matrix of the same events (ratio).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-events", type=int, default=400)
    ap.add_argument("--events-per-file", type=int, default=200)
    ap.add_argument("--patch-events", type=int, default=16, help="events patched (one batch)")
    ap.add_argument("--dir", type=Path, default=None, help="work directory (default: a temporary one)")
    args = ap.parse_args()
    os.environ.setdefault("PHYSFM_TRACKING", "0")

    import h5py
    import numpy as np
    import torch

    from physfm.data.convert import convert
    from physfm.data.generate_lartpc import generate_lartpc
    from physfm.data.loader import open_split, pad
    from physfm.models.patching import PatchConfig, make_patches

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.dir or Path(tmp)
        raw = work / "raw"
        t, cpu = time.perf_counter(), time.process_time()
        files = generate_lartpc(raw, args.n_events, 1, events_per_file=args.events_per_file, progress=False)
        sim_s, sim_cpu = time.perf_counter() - t, time.process_time() - cpu
        n_points = sum(int(np.load(f.with_name(f.stem + "_points.npy")).sum()) for f in files)

        t = time.perf_counter()  # reference: read every event's arrays, nothing else
        for f in files:
            with h5py.File(f, "r") as h:
                h["point"][:], h["cluster"][:]
        read_s = time.perf_counter() - t
        t = time.perf_counter()
        convert("pilarnet", raw, work / "data", progress=False)
        conv_s = time.perf_counter() - t

        split = open_split(work / "data", "train")
        block = split.read(np.arange(min(args.patch_events, len(split))))
        counts = np.diff(block.offsets)
        x, mask = pad(block, block.particles[:, :4].astype(np.float32), int(counts.max()))
        pts, m = torch.tensor(x), torch.tensor(mask)
        cfg = PatchConfig()
        t = time.perf_counter()
        make_patches(pts, m, cfg)
        patch_s = time.perf_counter() - t
        t = time.perf_counter()  # reference: one full pairwise distance matrix per event
        for b in range(len(pts)):
            xyz = pts[b, : int(counts[b]), :3]
            torch.cdist(xyz, xyz)
        ref_s = time.perf_counter() - t

    print(
        f"simulate: {args.n_events} events ({n_points / args.n_events:.0f} points/event) in {sim_cpu:.1f} CPU-s "
        f"= {args.n_events / sim_cpu:.1f} events and {n_points / sim_cpu / 1e3:.0f} k points per CPU-second "
        f"(wall {sim_s:.1f} s), writing included"
    )
    print(
        f"convert: {conv_s:.1f} s = {args.n_events / conv_s:.0f} events/s; plain h5py read {read_s:.2f} s; "
        f"ratio convert/read = {conv_s / read_s:.1f}"
    )
    print(
        f"patching ({cfg.n_patches} centres, {cfg.group_size} points, radius {cfg.radius} voxels): "
        f"{patch_s / len(pts) * 1e3:.0f} ms/event on CPU; pairwise-distance reference {ref_s / len(pts) * 1e3:.0f} "
        f"ms/event; ratio = {patch_s / ref_s:.1f}"
    )


if __name__ == "__main__":
    main()
