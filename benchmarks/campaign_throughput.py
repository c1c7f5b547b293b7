"""Campaign throughput: samples per hour on 1 and 2 ranks, bytes per sample, loader read rate.

The campaign is examples/campaign_default.yaml (the surrogate's default data
set) with ``samples`` cut down to a few (``--samples``). Both runs solve the
same samples (sample i depends only on the seed and i), one after the other,
as ``slipstream campaign`` subprocesses (the 2-rank run under ``mpirun -n 2``:
two groups of one rank, dynamic distribution), so the ratio is measured on the
same machine in the same run. The JSON holds:

* samples per hour on 1 and 2 ranks, and the parallel efficiency
  ``rate_2 / (2 rate_1)`` (with few samples the last sample's imbalance shows);
* mean solver wall time per sample (the store's ``wall_time``), increments,
  Newton iterations, cutbacks;
* bytes on disk per sample (zstd-compressed store / done samples);
* the read rate a training loader gets: random samples (every per-voxel
  field of one sample) read from a lazily opened store, with zarr and with
  ``xarray.open_zarr``; the store is small, so the reads come from the page cache;
* the estimated wall time of the whole default campaign on this machine with 1 and 2 ranks;
* the machine's load average before and after (the machine may be shared).

Usage::

    python benchmarks/campaign_throughput.py                      # 2 samples per run
    python benchmarks/campaign_throughput.py --samples 4 --reads 500
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

READ_FIELDS = ("euler0", "grain_id", "load_direction", "load_strain", "stress", "strain", "euler", "slip",
               "slip_resistance", "von_mises_stress", "von_mises_strain", "macro_stress", "macro_strain")


def run_campaign(config: pathlib.Path, store_path: pathlib.Path, ranks: int) -> float:
    cmd = [sys.executable, "-m", "mpi4py", "-m", "coupling.cli", "campaign", str(config), "--store", str(store_path)]
    if ranks > 1:
        cmd = [str(pathlib.Path(sys.executable).parent / "mpirun"), "-n", str(ranks)] + cmd
    env = dict(os.environ, PYTHONPATH=str(ROOT), MPLBACKEND="Agg", OMP_NUM_THREADS="1",
               OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, cwd=ROOT)
    return time.perf_counter() - t0


def store_stats(path: pathlib.Path) -> dict:
    import numpy as np

    from solver import campaign, store

    info = campaign.inspect_store(path)
    g = store.open_store(path)
    done = np.flatnonzero(store.sample_status(g) == store.DONE)
    return {
        "done": info["done"], "failed": info["failed"],
        "bytes_on_disk": info["bytes_on_disk"], "bytes_per_sample": info["bytes_per_done_sample"],
        "solver_wall_time_per_sample_s": [float(x) for x in np.asarray(g["wall_time"][:])[done]],
        "increments": [int(x) for x in np.asarray(g["increments"][:])[done]],
        "newton_iterations": [int(x) for x in np.asarray(g["newton_iterations"][:])[done]],
        "cutbacks": [int(x) for x in np.asarray(g["cutbacks"][:])[done]],
    }


def read_rate(path: pathlib.Path, reads: int, seed: int = 0) -> dict:
    """Random whole samples per second from a lazily opened store (zarr and xarray)."""
    import numpy as np
    import xarray as xr

    from solver import store

    g = store.open_store(path)
    done = np.flatnonzero(store.sample_status(g) == store.DONE)
    rng = np.random.default_rng(seed)
    order = rng.choice(done, size=reads)
    nbytes = 0
    t0 = time.perf_counter()
    for i in order:
        nbytes += sum(np.asarray(g[name][int(i)]).nbytes for name in READ_FIELDS)
    t_zarr = time.perf_counter() - t0

    ds = xr.open_zarr(path)[list(READ_FIELDS)]
    t0 = time.perf_counter()
    for i in order:
        ds.isel(sample=int(i)).load()
    t_xr = time.perf_counter() - t0
    return {"reads": reads, "fields": list(READ_FIELDS),
            "zarr_samples_per_s": reads / t_zarr, "xarray_samples_per_s": reads / t_xr,
            "decoded_MiB_per_sample": nbytes / reads / 2**20,
            "decoded_MiB_per_s_zarr": nbytes / t_zarr / 2**20}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "examples" / "campaign_default.yaml"))
    p.add_argument("--samples", type=int, default=2, help="samples per run (default 2)")
    p.add_argument("--reads", type=int, default=200, help="random sample reads for the read rate")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "campaign_throughput.json"))
    args = p.parse_args()

    base = yaml.safe_load(pathlib.Path(args.config).read_text())
    full_samples = int(base["samples"])
    load_before = os.getloadavg()
    runs = {}
    with tempfile.TemporaryDirectory(prefix="campaign-bench-") as tmp:
        tmp = pathlib.Path(tmp)
        cfg = tmp / "bench.yaml"
        cfg.write_text(yaml.safe_dump(dict(base, samples=args.samples), sort_keys=False))
        for ranks in (1, 2):
            path = tmp / f"ranks{ranks}.zarr"
            wall = run_campaign(cfg, path, ranks)
            stats = store_stats(path)
            runs[str(ranks)] = {"ranks": ranks, "wall_s": wall,
                                "samples_per_hour": stats["done"] / wall * 3600.0, **stats}
        reading = read_rate(tmp / "ranks1.zarr", args.reads)
    load_after = os.getloadavg()

    r1, r2 = runs["1"]["samples_per_hour"], runs["2"]["samples_per_hour"]
    out = {
        "benchmark": "campaign_throughput",
        "config": str(pathlib.Path(args.config).resolve().relative_to(ROOT)),
        "samples_per_run": args.samples,
        "runs": runs,
        "samples_per_hour": {"1": r1, "2": r2},
        "parallel_efficiency_2_ranks": r2 / (2.0 * r1) if r1 else None,
        "bytes_per_sample": runs["1"]["bytes_per_sample"],
        "read": reading,
        "estimate_full_default_campaign_h": {"samples": full_samples,
                                             "1_rank": full_samples / r1 if r1 else None,
                                             "2_ranks": full_samples / r2 if r2 else None,
                                             "store_GiB": full_samples * (runs["1"]["bytes_per_sample"] or 0) / 2**30},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "load_average_before": load_before, "load_average_after": load_after},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    dest = pathlib.Path(args.out)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(out, indent=2))
    print(json.dumps({k: out[k] for k in ("samples_per_hour", "parallel_efficiency_2_ranks", "bytes_per_sample",
                                          "estimate_full_default_campaign_h")}, indent=2))
    print(f"read: {reading['zarr_samples_per_s']:.1f} samples/s (zarr), "
          f"{reading['xarray_samples_per_s']:.1f} samples/s (xarray); wrote {dest}")


if __name__ == "__main__":
    main()
