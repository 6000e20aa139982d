"""SLURM: the profiles, and config/test.yaml through a real Slurm scheduler, compared with a local run.

The `slurm`-marked test needs the throw-away single-node cluster of tools/slurm/start.sh (.ci/run starts it);
it skips when no such cluster answers, or fails instead when CXLSPEAKS_REQUIRE_SLURM=1 (as in CI). It never
submits to another cluster: it checks the cluster name that start.sh writes.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401  (registers the bitshuffle filter for reading)
import numpy as np
import pytest
import yaml

from conftest import REPO

LOCAL_CLUSTER = "cxlslocal"  # ClusterName in tools/slurm/start.sh
TEST_PROFILE = REPO / "profiles" / "slurm-local-test"
DATA_STAGES = ("reflections", "water", "simulate_shard", "assemble")  # rules that must go through sbatch
DATA_DIRS = ("datasets", "splits", "features")  # <results_dir>/<dir>: data files compared with the local run
# config/test.yaml writes to its own results folder (results/test)
TINY_RESULTS = yaml.safe_load((REPO / "config" / "test.yaml").read_text())["results_dir"]
GPU_RULE = "train"
GPU_RULES = (GPU_RULE, "train_peaks", "train_paper_heatmap")  # the training rules: gpu=1 on the gpu partition


def load_profile(path: Path) -> dict:
    return yaml.safe_load((path / "config.yaml").read_text())


# ------------------------------------------------------------------------------------ profiles (no Slurm needed)


def test_slurm_profile_resolves_from_the_repository_root_and_has_the_cluster_settings():
    link = REPO / "slurm"
    assert link.is_symlink() and link.resolve() == (REPO / "profiles" / "slurm").resolve()
    profile = load_profile(link)
    assert profile["executor"] == "slurm"
    for key in ("jobs", "latency-wait", "retries", "rerun-incomplete"):
        assert key in profile, key
    defaults = profile["default-resources"]
    assert {"slurm_partition", "slurm_account", "runtime", "mem_mb"} <= set(defaults)
    assert "cpus_per_task" not in defaults  # it would override every rule's threads
    for rule in GPU_RULES:
        assert profile["set-resources"][rule]["gpu"] == 1, rule
        assert profile["set-resources"][rule]["slurm_partition"] != defaults["slurm_partition"], rule


def test_local_test_profile_differs_from_the_slurm_profile_only_where_the_local_cluster_needs_it():
    real, test = load_profile(REPO / "profiles" / "slurm"), load_profile(TEST_PROFILE)
    test_only = {"slurm-status-command", "slurm-init-seconds-before-status-checks", "slurm-keep-successful-logs"}
    assert set(test) - set(real) == test_only
    assert test["slurm-status-command"] == "squeue"  # no slurmdbd: sacct fails and the plugin would hang
    assert test["retries"] == 0
    for key in set(real) - {"retries", "default-resources"}:
        assert test[key] == real[key], key
    real_defaults = {k: v for k, v in real["default-resources"].items() if k != "slurm_account"}
    assert test["default-resources"] == real_defaults


def test_the_slurm_profile_is_valid_for_snakemake(tmp_path):
    """A dry run with the profile: Snakemake and the installed executor plugin accept every key."""
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path),
         "--configfile", str(REPO / "config" / "test.yaml"), "--profile", str(REPO / "slurm"), "-n"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "SLURM_CONF": "/nonexistent"},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "simulate_shard" in job_counts(result.stdout + result.stderr)


# ------------------------------------------------------------------------------------ helpers


def job_counts(output: str) -> dict[str, int]:
    """The 'Job stats' table of a snakemake run or dry run."""
    block = output.split("Job stats:")[1].split("\n\n")[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", block, re.M)}


def run(*cmd: str, timeout: int = 30) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def local_cluster_problem() -> str | None:
    """Why the local test cluster cannot be used, or None when it can."""
    missing = [tool for tool in ("sbatch", "squeue", "scontrol", "sinfo", "scancel") if shutil.which(tool) is None]
    if missing:
        return f"Slurm client tools missing ({', '.join(missing)}); tools/slurm/start.sh installs and starts one"
    try:
        ping = run("scontrol", "ping")
        if "UP" not in ping.stdout:
            return "no Slurm controller answers (start the local one with tools/slurm/start.sh)"
        config = run("scontrol", "show", "config").stdout
    except (subprocess.TimeoutExpired, OSError) as exc:
        return f"Slurm does not answer: {exc}"
    name = re.search(r"^ClusterName\s*=\s*(\S+)", config, re.M)
    if not name or name.group(1) != LOCAL_CLUSTER:
        return (f"the Slurm cluster here is {name.group(1) if name else '?'}, not the throw-away {LOCAL_CLUSTER} "
                "of tools/slurm/start.sh: not submitting test jobs to it")
    partitions = run("sinfo", "-h", "-o", "%R %G").stdout.split("\n")
    wanted = {load_profile(TEST_PROFILE)["default-resources"]["slurm_partition"],
              load_profile(TEST_PROFILE)["set-resources"][GPU_RULE]["slurm_partition"]}
    have = {line.split()[0] for line in partitions if line.strip()}
    if not wanted <= have:
        return f"the local cluster lacks partitions {sorted(wanted - have)}"
    if not any("gpu" in line for line in partitions):
        return "the local cluster advertises no (fake) GPU"
    return None


@pytest.fixture
def local_slurm():
    problem = local_cluster_problem()
    if problem:
        if os.environ.get("CXLSPEAKS_REQUIRE_SLURM") == "1":
            pytest.fail(f"CXLSPEAKS_REQUIRE_SLURM=1 but {problem}")
        pytest.skip(problem)
    return int(run("sinfo", "-h", "-p", "cpu", "-o", "%c").stdout.split()[0])  # CPUs of the node


def snakemake_cmd(workdir: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir),
            "--configfile", str(REPO / "config" / "test.yaml"), *args]


def run_logged(cmd: list[str], log: Path, timeout: int) -> int:
    with log.open("w") as out:
        return subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, timeout=timeout).returncode


def scontrol_job(job_id: str) -> dict[str, str]:
    line = run("scontrol", "show", "job", "-o", job_id).stdout.strip()
    return dict(field.split("=", 1) for field in line.split() if "=" in field)


def value_bytes(value) -> tuple:
    """A comparable form of an HDF5 dataset or attribute value: dtype, shape and the raw bytes."""
    if isinstance(value, np.ndarray):
        if value.dtype.kind == "O":
            return ("O", value.shape, repr(value.tolist()).encode())
        return (value.dtype.str, value.shape, value.tobytes())
    return (type(value).__name__, (), repr(value).encode())


def h5_contents(path: Path) -> dict[str, tuple]:
    """Every group's attributes and every dataset's dtype, shape, raw array bytes and attributes."""
    contents: dict[str, tuple] = {}
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            attrs = tuple(sorted((k, value_bytes(v)) for k, v in obj.attrs.items()))
            contents[name] = (value_bytes(obj[()]), attrs) if isinstance(obj, h5py.Dataset) else ("group", attrs)
        visit("/", f)
        f.visititems(visit)
    return contents


def result_files(workdir: Path) -> set[str]:
    """The run's output files (logs, benchmarks and Snakemake's own files left out)."""
    results = workdir / TINY_RESULTS
    return {str(p.relative_to(workdir)) for p in results.rglob("*")
            if p.is_file() and p.relative_to(results).parts[0] not in ("logs", "benchmarks")}


# ------------------------------------------------------------------------------------ the real scheduler


@pytest.mark.slurm
def test_test_config_through_slurm_equals_a_local_run(local_slurm, tmp_path):
    """config/test.yaml with the local-test profile: every non-local job goes through sbatch (the training jobs
    with a GPU on the gpu partition), and the data files equal those of a local run byte for byte."""
    cpus = local_slurm
    slurm_dir, local_dir = tmp_path / "slurm", tmp_path / "local"
    slurm_dir.mkdir()
    local_dir.mkdir()
    listed = run(*snakemake_cmd(slurm_dir, "--list-rules"), timeout=300)
    rules = set(listed.stdout.split())
    assert "simulate_shard" in rules, listed.stdout[-2000:] + listed.stderr[-2000:]
    dry = subprocess.run(snakemake_cmd(slurm_dir, "-n"), capture_output=True, text=True, timeout=300)
    assert dry.returncode == 0, dry.stdout[-3000:] + dry.stderr[-3000:]
    planned = job_counts(dry.stdout + dry.stderr)
    planned.pop("total", None)

    slurm_log, local_log = tmp_path / "slurm-run.log", tmp_path / "local-run.log"
    # --verbose: the plugin logs each "sbatch call: ..."; --max-threads: no rule asks for more CPUs than the node has
    slurm_cmd = snakemake_cmd(slurm_dir, "--profile", str(TEST_PROFILE), "--max-threads", str(cpus), "--verbose")
    local_cmd = snakemake_cmd(local_dir, "--cores", str(cpus))
    t0 = time.monotonic()
    try:
        # the local run side by side with the Slurm run (it fills the CPUs while Slurm jobs wait for polls)
        with ThreadPoolExecutor(2) as pool:
            slurm_rc = pool.submit(run_logged, slurm_cmd, slurm_log, 1800)
            local_rc = pool.submit(run_logged, local_cmd, local_log, 1800)
            slurm_rc, local_rc = slurm_rc.result(), local_rc.result()
    finally:
        run_id = re.search(r"SLURM run ID: (\S+)", slurm_log.read_text()) if slurm_log.exists() else None
        if run_id:  # nothing of this run may stay queued (the job name is the run id)
            run("scancel", "--name", run_id.group(1))
    wall = time.monotonic() - t0
    output = slurm_log.read_text()
    assert slurm_rc == 0, f"slurm run failed ({slurm_rc}):\n{output[-6000:]}"
    assert local_rc == 0, f"local run failed ({local_rc}):\n{local_log.read_text()[-4000:]}"

    # ---- which jobs went through sbatch
    calls = [line.split("sbatch call: ", 1)[1] for line in output.splitlines() if "sbatch call: " in line]
    submissions = re.findall(r"submitted with SLURM jobid (\d+) \(log: (.+?)\)\.", output)
    job_id_of = {str(Path(log).parent): job_id for job_id, log in submissions}  # one log folder per job
    assert len(calls) == len(submissions) == len(job_id_of) > 0
    jobs = []  # (rule, wildcards, sbatch call, Slurm job id)
    for call in calls:
        comment = re.search(r"--comment (\S+)", call).group(1)
        rule, _, wildcards = comment.removeprefix("rule_").partition("_wildcards_")
        log_dir = str(Path(re.search(r"--output (\S+)", call).group(1)).parent)
        jobs.append((rule, wildcards, call, job_id_of[log_dir]))
        # Slurm itself wrote the job's output there (the profile keeps the logs of successful jobs)
        assert (Path(log_dir) / f"{job_id_of[log_dir]}.log").is_file(), call
    sent = Counter(rule for rule, *_ in jobs)
    local = Counter(re.findall(r"^localrule (\w+):", output, re.M))
    assert sent + local == Counter(planned), f"planned {planned}, sbatch {dict(sent)}, local {dict(local)}"
    for stage in DATA_STAGES:
        assert sent[stage] == planned[stage] > 0, stage
    config = yaml.safe_load((REPO / "config" / "test.yaml").read_text())
    per_shard = config["defaults"]["frames_per_shard"]
    shards = sum(-(-(entry or {}).get("frames", config["defaults"]["frames"]) // per_shard)
                 for entry in config["datasets"].values())
    assert sent["simulate_shard"] == shards  # N shards -> N parallel jobs

    # ---- what Slurm recorded: every job ran to completion; GPU jobs asked for and were given a GPU
    for rule in GPU_RULES:
        if rule in rules:
            assert sent[rule] == planned[rule] > 0, f"the workflow has a {rule} rule but no {rule} job was submitted"
    gpu_partition = load_profile(TEST_PROFILE)["set-resources"][GPU_RULE]["slurm_partition"]
    for rule, wildcards, call, job_id in jobs:
        record = scontrol_job(job_id)
        assert record.get("JobState") == "COMPLETED" and record.get("ExitCode") == "0:0", (rule, record)
        assert record["Comment"] == f"rule_{rule}" + (f"_wildcards_{wildcards}" if wildcards else "")
        assert record["JobName"] == run_id.group(1)
        tres = record.get("TresPerJob", "") + record.get("TresPerNode", "")
        if rule in GPU_RULES:
            assert "--gpus=1" in call and f"-p {gpu_partition}" in call, call
            assert "gpu:1" in tres and record["Partition"] == gpu_partition, record
        else:
            assert "--gpus" not in call and "gpu" not in tres and record["Partition"] != gpu_partition, (rule, call)
        assert re.search(r"--cpus-per-task=\d+", call) and " --mem " in call and " -t " in call, call

    # ---- the same outputs as the local run; data files equal byte for byte (HDF5: every dataset's bytes)
    assert result_files(slurm_dir) == result_files(local_dir)
    compared, identical_h5 = [], []
    for name in sorted(result_files(slurm_dir)):
        if Path(name).relative_to(TINY_RESULTS).parts[0] not in DATA_DIRS:
            continue
        a, b = slurm_dir / name, local_dir / name
        if a.suffix == ".h5":
            assert h5_contents(a) == h5_contents(b), f"{name}: HDF5 contents differ"
            if a.read_bytes() == b.read_bytes():
                identical_h5.append(name)
        else:
            assert a.read_bytes() == b.read_bytes(), f"{name} differs"
        compared.append(name)
    assert any(n.endswith("frames.h5") for n in compared) and any(n.endswith("manifest.csv") for n in compared)
    assert any(n.startswith(f"{TINY_RESULTS}/splits/") for n in compared)

    first = {rule: call for rule, _, call, _ in reversed(jobs)}
    print(f"\nslurm run + local run: {wall:.0f} s wall; {len(jobs)} jobs through sbatch {dict(sent)}, "
          f"local {dict(local)}; {len(compared)} data files equal ({len(identical_h5)} HDF5 files byte-identical)")
    for rule in ("simulate_shard", GPU_RULE):
        if rule in first:
            print(f"sbatch line ({rule}): {first[rule].split(' --wrap=')[0]}")
