"""`pssl gpu-slots`, the GPU slot allocator of machines without a scheduler, with fake device ids: concurrent
jobs never share a slot, a killed job's slots are free again, and where the pool comes from."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pssl.gpu_slots import lock_dir, slot_pool, try_take

POOL = ("3", "5", "8")


def allocator_env(locks: Path, pool=POOL) -> dict:
    """A machine without SLURM whose GPU pool is `pool`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k != "CUDA_VISIBLE_DEVICES"}
    return {**env, "PSSL_GPU_SLOTS": ",".join(pool), "PSSL_GPU_LOCK_DIR": str(locks)}


def on_slots(n: int, script: str, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pssl", "gpu-slots", str(n), "--", "sh", "-c", script], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_concurrent_jobs_never_share_a_slot(tmp_path):
    """14 jobs of one or two GPUs started at once on 3 slots: each logs the CUDA_VISIBLE_DEVICES it saw and
    when it held them; jobs that saw a common id never held it at the same time, and all slots were used."""
    env = allocator_env(tmp_path / "locks")
    script = 'echo "$CUDA_VISIBLE_DEVICES $(date +%s.%N)"; sleep 0.4; date +%s.%N'
    jobs = [on_slots(1 + (i % 3 == 0), script, env) for i in range(14)]
    held = []
    for job in jobs:
        out, err = job.communicate(timeout=120)
        assert job.returncode == 0, err
        first, end = out.split("\n")[:2]
        devices, start = first.split()
        held.append((set(devices.split(",")), float(start), float(end)))
    assert all(len(d) == 1 + (i % 3 == 0) and d <= set(POOL) for i, (d, _, _) in enumerate(held))
    assert set().union(*(d for d, _, _ in held)) == set(POOL)
    overlapping = 0
    for i, (a, a0, a1) in enumerate(held):
        for b, b0, b1 in held[i + 1:]:
            if a0 < b1 and b0 < a1:
                overlapping += 1
                assert not a & b, f"{a} and {b} held at the same time"
    assert overlapping, "no two jobs ran at once: the test proved nothing"


def test_a_killed_job_frees_its_slot(tmp_path):
    env = allocator_env(tmp_path / "locks", pool=("3",))
    holder = on_slots(1, "echo started; exec sleep 600", env)
    assert holder.stdout.readline() == "started\n"
    waiter = on_slots(1, 'echo "$CUDA_VISIBLE_DEVICES"', env)
    time.sleep(1.5)
    assert waiter.poll() is None, "a second job got the only slot while the first held it"
    holder.send_signal(signal.SIGKILL)  # the job's own process: gpu-slots exec'd the command
    holder.wait()
    out, err = waiter.communicate(timeout=30)
    assert waiter.returncode == 0 and out == "3\n", err
    assert "waiting for 1 free GPU slot(s) of 3" in err and "CUDA_VISIBLE_DEVICES=3 (waited" in err


def test_a_job_takes_all_or_nothing_and_asks_no_more_than_the_pool(tmp_path):
    locks = tmp_path / "locks"
    one = try_take(1, list(POOL), locks)
    assert one and one[0] == ["3"]
    assert try_take(3, list(POOL), locks) is None  # two are free: it holds none of them while it waits
    two = try_take(2, list(POOL), locks)
    assert two and two[0] == ["5", "8"]
    for fd in one[1] + two[1]:
        os.close(fd)
    proc = subprocess.run([sys.executable, "-m", "pssl", "gpu-slots", "4", "--", "true"],
                          env=allocator_env(locks), capture_output=True, text=True, check=False)
    assert proc.returncode == 2 and "needs 4 GPU(s) but the pool has 3 (3,5,8)" in proc.stderr


def test_a_cpu_job_sees_no_gpu_and_a_machine_without_gpus_runs_as_is(tmp_path):
    env = allocator_env(tmp_path / "locks")
    cpu = subprocess.run([sys.executable, "-m", "pssl", "gpu-slots", "0", "--", "sh", "-c",
                          'echo "[$CUDA_VISIBLE_DEVICES]"'], env=env, capture_output=True, text=True,
                         check=False)
    assert cpu.stdout == "[]\n"
    no_gpus = {**env, "PSSL_GPU_SLOTS": ""}
    plain = subprocess.run([sys.executable, "-m", "pssl", "gpu-slots", "1", "--", "sh", "-c",
                            'echo "[${CUDA_VISIBLE_DEVICES-unset}]"'], env=no_gpus, capture_output=True, text=True,
                           check=False)
    assert plain.stdout == "[unset]\n" and "no GPUs known" in plain.stderr


@pytest.mark.parametrize("environ, pool", [
    ({"SLURM_JOB_ID": "7", "CUDA_VISIBLE_DEVICES": "0,1", "PSSL_GPU_SLOTS": "4,5"}, ["0", "1"]),  # the allocation
    ({"PSSL_GPU_SLOTS": "4, 5", "CUDA_VISIBLE_DEVICES": "2"}, ["4", "5"]),
    ({"CUDA_VISIBLE_DEVICES": "GPU-1a2b,GPU-3c4d"}, ["GPU-1a2b", "GPU-3c4d"]),  # UUIDs are ids too
    ({"CUDA_VISIBLE_DEVICES": ""}, []),  # GPUs hidden on purpose
])
def test_where_the_pool_comes_from(environ, pool):
    assert slot_pool(environ) == pool


def test_slurm_jobs_sharing_a_node_lock_apart():
    """SLURM numbers each job's GPUs from 0: two jobs on one node must not wait for each other's "0"."""
    base = {"PSSL_GPU_LOCK_DIR": "/locks"}
    assert lock_dir(base) == Path("/locks")
    assert lock_dir({**base, "SLURM_JOB_ID": "11"}) != lock_dir({**base, "SLURM_JOB_ID": "12"})


def test_lock_folders_are_shared_by_every_user_and_an_existing_lock_opens_read_only(tmp_path):
    """Every folder the locks need is made sticky and world-writable (a SLURM job of one user may create the
    base folder another user's job needs next); a lock file that exists is opened without O_CREAT, so a file
    another user made in a sticky folder can be locked (protected_regular refuses O_CREAT on it)."""
    import stat

    from pssl.gpu_slots import lock_path, shared_dir, try_take
    folder = tmp_path / "base" / "slurm-7"
    shared_dir(folder)
    for f in (folder, folder.parent):
        assert stat.S_IMODE(f.stat().st_mode) == 0o1777, f
    lock_path(folder, "0").touch(mode=0o444)  # read-only, as another user's file is to us
    slots, fds = try_take(1, ["0"], folder)
    assert slots == ["0"]
    for fd in fds:
        os.close(fd)
