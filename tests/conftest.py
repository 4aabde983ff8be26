import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pssl.settings import DemoSettings

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "configs" / "tiny.yaml"
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"


def full_config(path: Path) -> dict:
    """A config file as the workflow sees it: every default filled, the built-in variants added (no checks
    across keys: a preset's data roots are not given here)."""
    import yaml

    from pssl.config import complete_config
    return complete_config(yaml.safe_load(Path(path).read_text()), SCHEMA)
TINY_DEMO = DemoSettings(seed=0, num_classes=3, images_per_class=6, min_side=48, max_side=80, downstream_train=4,
                         downstream_val=2, pool_images=4)


@pytest.fixture
def device():
    """The device of a `gpu` test: PSSL_TEST_DEVICE (`make test-gpu` sets cuda: a GPU that torch cannot see
    fails there, it does not pass as skips; cpu runs the bodies on the CPU, to check the tests themselves), or
    by default CUDA, skipped without it (this project's CI has no GPU)."""
    import torch
    name = os.environ.get("PSSL_TEST_DEVICE")
    if name == "cuda" and not torch.cuda.is_available():
        pytest.fail("PSSL_TEST_DEVICE=cuda, but torch sees no GPU (a CPU build of torch, a driver that does not "
                    f"match, CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r})")
    if name is None and not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU (make test-gpu on a GPU machine; PSSL_TEST_DEVICE=cpu runs it on the CPU)")
    return torch.device(name or "cuda")


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory) -> Path:
    """The demo data at its tiny-config size, generated once per test session."""
    from pssl.demo.make import make_demo_data
    out = tmp_path_factory.mktemp("demo") / "demo"
    make_demo_data(out, TINY_DEMO)
    return out


def snakemake_env() -> dict:
    """The environment a user gets from `make`: the venv's bin first on PATH."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return env


def snakemake_command(workdir: Path, *args: str, cores: str | None = "2", prefix: tuple[str, ...] = ()) -> list[str]:
    """The real Snakefile with the tiny config in `workdir` (its own .snakemake and results).
    A `--configfile` among `args` replaces the tiny config (pass TINY first to layer on top of it).
    `cores=None` passes no --cores (a cluster run); `prefix` wraps the command (e.g. taskset)."""
    configs = [] if "--configfile" in args else ["--configfile", str(TINY)]
    return [*prefix, shutil.which("snakemake", path=snakemake_env()["PATH"]), "--snakefile", str(REPO / "Snakefile"),
            "--directory", str(workdir), *configs, *(["--cores", cores] if cores else []), *args]


def run_snakemake(workdir: Path, *args: str, check: bool = True, cores: str | None = "2",
                  prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """Run snakemake_command to its end."""
    cmd = snakemake_command(workdir, *args, cores=cores, prefix=prefix)
    proc = subprocess.run(cmd, cwd=workdir, env=snakemake_env(), capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
    return proc


def kill_at_first_checkpoint(cmd: list[str], ckpt_dir: Path) -> int:
    """Start a training command, kill -9 it as soon as it wrote a checkpoint; return that checkpoint's step."""
    proc = subprocess.Popen(cmd, env=snakemake_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None and not list(ckpt_dir.glob("ckpt-*.pt")):
        time.sleep(0.02)
    assert proc.poll() is None, "training ended before a checkpoint; nothing to resume"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return int(sorted(ckpt_dir.glob("ckpt-*.pt"))[0].name[5:-3])


def pytest_collection_modifyitems(config, items):
    """Under mutmut (docs/development.md), the fast tier only: the mutants live in this process, not in
    Snakemake's jobs."""
    if "MUTANT_UNDER_TEST" in os.environ:
        fast = [item for item in items if not any(item.get_closest_marker(m) for m in ("e2e", "slurm", "slow"))]
        config.hook.pytest_deselected(items=[item for item in items if item not in fast])
        items[:] = fast
