"""The conversion spread over SLURM jobs: each group of input files is its own sbatch job, and the
gathered dataset equals a one-job conversion run locally (same data_version, same shard bytes).

Uses the single-node cluster of tests/test_slurm.py (its fixture and helpers); skips where SLURM
cannot be installed, fails there under ``CI`` / ``PHYSFM_REQUIRE_SLURM``, as that file does.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from test_slurm import PROFILE, _copy_workflow, _env, _jobs, _snakemake, slurm_cluster  # noqa: F401

from physfm.data.shards import load_manifest, verify_dataset

GROUPS = 3


def _study(work: Path, groups: int) -> Path:
    """The smoke study's data settings, its jets in 4 files, converted in ``groups`` jobs."""
    config = yaml.safe_load((work / "config" / "smoke.yaml").read_text())
    config["data"]["generate"]["files"] = 4
    config["data"]["convert"]["groups"] = groups
    (work / "config" / "scale.yaml").write_text(yaml.safe_dump(config))
    return work / "results" / "smoke" / "data"


def _shards(data: Path) -> dict[str, bytes]:
    return {str(p.relative_to(data)): p.read_bytes() for p in sorted(data.rglob("*.h5"))}


@pytest.mark.slurm
@pytest.mark.slow
def test_conversion_groups_run_as_sbatch_jobs_and_gather_to_the_one_job_dataset(
    slurm_cluster: None,  # noqa: F811
    tmp_path: Path,
) -> None:
    (tmp_path / "local").mkdir()
    (tmp_path / "cluster").mkdir()
    local, cluster = _copy_workflow(tmp_path / "local"), _copy_workflow(tmp_path / "cluster")
    one_job, scattered = _study(local, 1), _study(cluster, GROUPS)
    target = ["results/smoke/data", "--configfile", "config/scale.yaml"]
    _snakemake(local, "--cores", "2", *target, env=_env(PHYSFM_TRACKING="0"))
    out = _snakemake(cluster, "--profile", str(PROFILE), *target, env=_env(PHYSFM_TRACKING="0"), timeout=1200)

    jobs = _jobs(out.stdout + out.stderr)
    parts = [j for j in jobs if j.rule == "convert_part"]
    assert len(parts) == GROUPS, [j.rule for j in jobs]
    assert all(j.slurm_id for j in jobs) and len({j.slurm_id for j in jobs}) == len(jobs), jobs
    assert {j.rule for j in jobs} == {"generate", "convert_part", "convert"}

    manifest = load_manifest(scattered)
    assert manifest["data_version"] == load_manifest(one_job)["data_version"]
    assert _shards(scattered) == _shards(one_job) and len(_shards(one_job)) > 3
    assert verify_dataset(scattered) == []
    assert len(manifest["sources"]) == 4
    assert not (scattered.parent / "convert_parts").exists(), "the parts are temporary"
