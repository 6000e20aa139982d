"""Every command of the README's bash blocks, run verbatim from the root of a fresh copy of the repository, as a
user types it (no `-d`, no `-s`, no paths rewritten).

Commands that cannot run here as they stand are still typed verbatim and made cheap or checked another way, each
said in COVERAGE: the default run (30 minutes) runs as a dry run (the environment's SNAKEMAKE_PROFILE adds
`--dry-run`, the command line stays as typed), the SLURM ones as dry runs with `-n`, the test command is the
line .ci/run runs, CrystFEL's indexamajig runs where it is installed. A README command that no entry of COVERAGE
covers fails `test_every_readme_command_is_covered`, so a new command cannot slip in untested.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import REPO, TINY_RUN_COMMAND, copy_checkout

README = (REPO / "README.md").read_text()

#: (pattern of a README command, how the tests below run it)
COVERAGE = [
    (r"python3 -m venv \.venv && \. \.venv/bin/activate$", "venv"),
    (r"python3 -m pip install -e '\.\[workflow\]' && snakemake --cores 2$", "default run (dry)"),
    (r"python3 -m pip install -e '\.\[test\]' && python3 -m pytest$", "the test command of .ci/run"),
    (re.escape(TINY_RUN_COMMAND) + "$", "tiny run"),
    (r"snakemake --cores 2 results/datasets/01/frames\.h5$", "default target (dry)"),
    (r"snakemake --unlock$", "unlock"),
    (r"snakemake --profile slurm( --configfile config/test\.yaml)?$", "slurm (dry)"),
    (r"snakemake --profile profiles/slurm-local-test --configfile config/test\.yaml$", "tests/test_slurm.py"),
    (r"tools/slurm/(start|stop)\.sh$", "tests/test_slurm.py"),
    (r"python3 -m pytest -m slurm$", "tests/test_slurm.py"),
    (r"cxlspeaks run results/pipeline/test_frames\.lst .*", "after the tiny run"),
    (r"HDF5_PLUGIN_PATH=.* indexamajig .*", "crystfel"),
    (r"cxlspeaks replay .* &$", "live pair"),
    (r"cxlspeaks live .*", "live pair"),
]


def readme_commands() -> list[str]:
    """The commands of the README's ```bash blocks: continuation lines joined, comments dropped."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#\s.*$", "", line).strip()
            if line and not line.startswith("#"):
                commands.append(re.sub(r"\s+", " ", line))
    return commands


def coverage_of(command: str) -> str | None:
    kinds = [kind for pattern, kind in COVERAGE if re.fullmatch(pattern, command)]
    return kinds[0] if len(kinds) == 1 else None


def commands_of(kind: str) -> list[str]:
    return [c for c in readme_commands() if coverage_of(c) == kind]


def bash(command: str, cwd: Path, env: dict | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", command], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def check(result: subprocess.CompletedProcess, command: str) -> str:
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"`{command}` failed ({result.returncode}):\n{output[-4000:]}"
    assert "Traceback" not in output, output[-4000:]
    return output


@pytest.fixture(scope="module")
def dry_run_profile(tmp_path_factory) -> dict:
    """SNAKEMAKE_PROFILE pointing at a profile that only adds --dry-run (Snakemake reads it when no --profile is
    given), so the default run's command is typed as it stands and plans every job without running them."""
    profile = tmp_path_factory.mktemp("dry-run-profile")
    (profile / "config.yaml").write_text("dry-run: true\n")
    return {"SNAKEMAKE_PROFILE": str(profile)}


@pytest.fixture(scope="module")
def user_environment(tmp_path_factory) -> dict:
    """A virtual environment seeing this interpreter's packages, on PATH first, as an activated user's shell:
    the README's pip commands install the package from the copy into it without downloading anything."""
    env_dir = tmp_path_factory.mktemp("user-env") / "env"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(env_dir)], check=True)
    return {"PATH": f"{env_dir / 'bin'}:{os.environ['PATH']}", "VIRTUAL_ENV": str(env_dir)}


def test_every_readme_command_is_covered():
    commands = readme_commands()
    assert len(commands) >= 10
    uncovered = [c for c in commands if coverage_of(c) is None]
    assert not uncovered, f"README commands no test runs (add them to COVERAGE): {uncovered}"
    # and the two commands of "Two commands" are there, install + main job and install + tests
    assert commands_of("default run (dry)") and commands_of("the test command of .ci/run")


def test_the_venv_step_makes_an_environment(tmp_path):
    for command in commands_of("venv"):
        output = check(bash(f"{command} && python3 -c 'import sys; print(sys.prefix)'", tmp_path), command)
        assert output.strip().splitlines()[-1] == str(tmp_path / ".venv")


def test_the_test_command_is_what_ci_runs():
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    for command in commands_of("the test command of .ci/run"):
        assert command in ci


def test_install_and_default_run_from_a_fresh_copy(tmp_path, user_environment, dry_run_profile):
    root = copy_checkout(tmp_path)
    for command in commands_of("default run (dry)"):
        output = check(bash(command, root, {**user_environment, **dry_run_profile}), command)
        assert "This was a dry-run" in output
        # the default config's 11 datasets, written to results/, its structure job shipped with the package
        assert "results/datasets/09/frames.h5" in output and "results/test/" not in output
        assert re.search(r"^download_structure\s+1\s*$", output, re.M)
    for command in commands_of("default target (dry)"):
        output = check(bash(command, root, dry_run_profile), command)
        assert re.search(r"^assemble\s+1\s*$", output, re.M) and "dataset=01" in output


def test_slurm_commands_plan_from_a_fresh_copy(tmp_path):
    root = copy_checkout(tmp_path)
    for command in commands_of("slurm (dry)"):
        output = check(bash(f"{command} -n", root), command)
        results = "results/test/" if "config/test.yaml" in command else "results/datasets/"
        assert "This was a dry-run" in output and results in output


def test_the_tiny_run_ran_as_typed_and_wrote_its_own_folder(tiny_run_checkout):
    assert commands_of("tiny run") == [TINY_RUN_COMMAND]
    root = tiny_run_checkout
    assert (root / "results" / "test" / "reports" / "index.html").is_file()
    assert (root / "results" / "test" / "pipeline" / "test_frames.lst").is_file()
    assert not (root / "results" / "reports").exists()  # a default run's results would be untouched
    for command in commands_of("unlock"):
        check(bash(command, root), command)


@pytest.fixture(scope="module")
def default_layout(tiny_run_checkout) -> Path:
    """The tiny run's results also under the default run's paths (results/models, results/pipeline,
    results/datasets), so the README's commands on the default run's files run verbatim."""
    results = tiny_run_checkout / "results"
    for name in ("models", "pipeline", "datasets"):
        if not (results / name).exists():
            (results / name).symlink_to(Path("test") / name)
    return tiny_run_checkout


def test_pipeline_commands_score_the_test_frames(default_layout):
    commands = commands_of("after the tiny run")
    assert commands
    test_frames = (default_layout / "results" / "pipeline" / "test_frames.lst").read_text().splitlines()
    for command in commands:
        check(bash(command, default_layout), command)
        table = pd.read_csv(default_layout / "predictions.csv")
        assert len(table) == len(test_frames)
        written = pd.read_csv(default_layout / "predictions.csv", dtype=str)["n_peaks"].dropna()
        assert written.str.fullmatch(r"\d+").all()  # integers as written, not 12.0
    if any("--cxi out/peaks.cxi" in c for c in commands):
        for suffix in (".cxi", ".lst", ".geom", ".cell"):
            assert (default_layout / "out" / f"peaks{suffix}").is_file()


def test_indexamajig_command_where_crystfel_is_installed(default_layout):
    commands = commands_of("crystfel")
    assert commands
    if subprocess.run(["bash", "-c", "command -v indexamajig"], capture_output=True).returncode != 0:
        pytest.skip("CrystFEL's indexamajig is not installed")
    for command in commands:
        check(bash(command, default_layout, timeout=1200), command)
        assert (default_layout / "out" / "hits.stream").is_file()


def test_replay_and_live_commands_score_a_series(default_layout):
    replay, = [c for c in commands_of("live pair") if c.startswith("cxlspeaks replay")]
    live, = [c for c in commands_of("live pair") if c.startswith("cxlspeaks live")]
    started = time.monotonic()
    result = bash(f"{replay}\n{live}\nwait", default_layout, timeout=300)
    check(result, f"{replay} {live}")
    run_dir = default_layout / re.search(r"--out (\S+)", live).group(1)
    frames = pd.read_csv(run_dir / "frames.csv")
    count = int(re.search(r"--count (\d+)", replay).group(1))
    assert len(frames) == count and frames["image_id"].is_unique
    summary = json.loads((run_dir / "summary.json").read_text())
    # the run ended by itself at the series' end message, every frame processed
    assert "ended" in str(summary["stop_reason"]) and summary["frames_processed"] == count
    assert time.monotonic() - started < 300
