"""Issue 23: stop signals (SIGTERM / SIGINT / SIGUSR1) and the work-dir lock, with real processes.

A stopped run finishes its step, writes a checkpoint and resumes from it bit-exactly; under torchrun
every rank stops at the same step whichever got the signal; a second signal exits at once; a second
train in a live work dir is refused and touches nothing; a lock nobody holds is taken over.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_train import _records, tiny_config

from semask.cli import main
from semask.config import dump_config
from semask.data import make_context_dataset
from semask.engine.checkpoint import load_training_checkpoint
from semask.engine.distributed import agree_stop, init_distributed
from semask.engine.lock import FolderLock, FolderLockedError
from semask.engine.trainer import WORK_DIR_LOCK, TrainingInterrupted, _Trainer, train

pytestmark = pytest.mark.usefixtures("one_thread")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "SEMASK_MALLOC": "0"}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_context_dataset(tmp_path_factory.mktemp("data"), num_train=8, num_val=2, size=48, seed=2)


def _wait_for(predicate, what: str, proc: subprocess.Popen | None = None, timeout: float = 180.0) -> None:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the process ended ({proc.returncode}) before {what}: {proc.communicate()}")
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.is_file() else 0


def _assert_same_weights(a: Path, b: Path) -> None:
    first, second = load_training_checkpoint(a), load_training_checkpoint(b)
    assert first["model"].keys() == second["model"].keys()
    for key in first["model"]:
        assert torch.equal(first["model"][key], second["model"][key]), key
    for pid, state in first["optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(value, second["optimizer"]["state"][pid][name]), (pid, name)


# ----------------------------------------------------------------------------- signals


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_a_signal_mid_run_checkpoints_and_the_resume_is_bit_exact(data: Path, tmp_path: Path, monkeypatch, sig) -> None:
    """The signal arrives during step 4, when an evaluation is due (eval_interval 4): the step ends,
    the checkpoint is written before that evaluation (it could take minutes), and the resumed run
    evaluates first. log_interval 3: the losses of step 4, not yet logged, travel in the checkpoint."""
    cfg = tiny_config(
        data, "schedule.iters=8", "train.log_interval=3", "train.eval_interval=4", "train.ckpt_interval=8"
    )
    straight = train(cfg, tmp_path / "straight", progress=False)

    step = _Trainer._step

    def signalled_in_step_4(self: _Trainer, batches, it: int):  # type: ignore[no-untyped-def]
        if it == 3:
            os.kill(os.getpid(), sig)  # as a scheduler would; the handler runs at once, in this thread
        return step(self, batches, it)

    monkeypatch.setattr(_Trainer, "_step", signalled_in_step_4)
    handler = signal.getsignal(sig)
    with pytest.raises(TrainingInterrupted) as info:
        train(cfg, tmp_path / "resumed", progress=False)
    monkeypatch.setattr(_Trainer, "_step", step)
    assert (info.value.iteration, info.value.exit_code) == (4, 128 + sig)
    assert signal.getsignal(sig) is handler  # the caller's handler is back
    state = load_training_checkpoint(info.value.checkpoint)
    assert state["iteration"] == 4 and state["eval_pending"] and len(state["log_window"]) == 1
    records = [r["type"] + str(r["iter"]) for r in _records(tmp_path / "resumed")]
    assert records == ["train3"]  # stopped before the evaluation of iteration 4
    assert not (tmp_path / "resumed" / WORK_DIR_LOCK).exists()  # released

    resumed = train(cfg, tmp_path / "resumed", resume=True, progress=False)
    _assert_same_weights(tmp_path / "straight/checkpoints/latest.pth", tmp_path / "resumed/checkpoints/latest.pth")
    assert _records(tmp_path / "straight") == _records(tmp_path / "resumed")  # losses, lr and mIoU, in order
    assert straight["best"] == resumed["best"] and straight["parameter_digests"] == resumed["parameter_digests"]
    _assert_same_weights(tmp_path / "straight/checkpoints/best.pth", tmp_path / "resumed/checkpoints/best.pth")


def test_a_stop_in_the_last_step_is_evaluated_once(data: Path, tmp_path: Path, monkeypatch) -> None:
    """A signal in the last step puts off the final evaluation; the resumed run does it and saves
    that it did (latest.pth: nothing pending, the new best), so a second resume neither evaluates
    again nor logs a second val record of that iteration."""
    cfg = tiny_config(data, "schedule.iters=4", "train.eval_interval=4", "train.ckpt_interval=4")
    work = tmp_path / "work"
    step = _Trainer._step

    def signalled_in_the_last_step(self: _Trainer, batches, it: int):  # type: ignore[no-untyped-def]
        if it == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return step(self, batches, it)

    monkeypatch.setattr(_Trainer, "_step", signalled_in_the_last_step)
    with pytest.raises(TrainingInterrupted) as info:
        train(cfg, work, progress=False)
    monkeypatch.setattr(_Trainer, "_step", step)
    assert info.value.iteration == 4 and load_training_checkpoint(info.value.checkpoint)["eval_pending"]
    assert [r["type"] for r in _records(work)] == ["train"] * 4

    resumed = train(cfg, work, resume=True, progress=False)
    assert resumed["best"]["iteration"] == 4
    state = load_training_checkpoint(work / "checkpoints" / "latest.pth")
    assert state["iteration"] == 4 and not state["eval_pending"] and state["best"] == resumed["best"]
    records = _records(work)
    assert [r["type"] + str(r["iter"]) for r in records] == ["train1", "train2", "train3", "train4", "val4"]

    again = train(cfg, work, resume=True, progress=False)  # nothing left to do
    assert _records(work) == records and again["best"] == resumed["best"]


_HOLD_SIGNALS = """
import sys, time
from semask.engine.signals import StopSignals
with StopSignals() as stop:
    print("ready", flush=True)
    while True:  # a step that never ends: only a second signal gets out
        time.sleep(0.02)
"""


def test_a_second_signal_exits_at_once_and_a_relayed_copy_does_not(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD_SIGNALS], env=ENV, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        proc.send_signal(signal.SIGINT)
        time.sleep(0.1)
        proc.send_signal(signal.SIGINT)  # torchrun relays the terminal's Ctrl-C: the same signal
        time.sleep(1.5)
        assert proc.poll() is None
        proc.send_signal(signal.SIGINT)  # a person pressing Ctrl-C again
        assert proc.wait(timeout=30) == 130
    finally:
        proc.kill()
    err = proc.stderr.read().decode()  # type: ignore[union-attr]
    assert "SIGINT received: finishing the current step, then writing a checkpoint" in err
    assert "SIGINT received again: stopping now, without a checkpoint" in err and "Traceback" not in err


# ----------------------------------------------------------------------------- the work-dir lock, a live CLI run


def test_a_live_run_refuses_a_second_train_and_stops_cleanly_on_sigterm(data: Path, tmp_path: Path, capsys) -> None:
    cfg = tiny_config(data, "schedule.iters=400", "train.eval_interval=1000", "train.ckpt_interval=1000")
    config = dump_config(cfg, tmp_path / "long.yaml")
    work = tmp_path / "work"
    argv = ["train", str(config), "--work-dir", str(work), "--no-progress"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "semask.cli", *argv],
        env=ENV,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        log = work / "metrics.jsonl"
        _wait_for(lambda: _lines(log) >= 2, "two logged iterations", proc)
        planted = work / "checkpoints" / ".iter_00000400.pth.abcd.tmp"  # as if the live run were writing it
        planted.parent.mkdir(exist_ok=True)
        planted.write_bytes(b"half a checkpoint")
        before = log.read_text().splitlines()

        assert main([*argv, "--resume"]) == 1  # e.g. beside workers a killed launcher left running
        err = capsys.readouterr().err
        assert f"another semask train is running in {work}: process {proc.pid} on {socket.gethostname()}" in err
        assert "semask.cli train" in err and "started 20" in err
        assert planted.exists()  # its temporary files were not cleaned up
        after = log.read_text().splitlines()
        assert after[: len(before)] == before and len(after) >= len(before)  # not truncated, only appended to

        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    err_text = err.decode()
    assert proc.returncode == 128 + signal.SIGTERM, err_text[-3000:]
    assert "Traceback" not in err_text
    assert f"resume with: semask train {config} --work-dir {work} --resume" in err_text
    state = load_training_checkpoint(work / "checkpoints" / "latest.pth")
    stopped_at = state["iteration"]
    assert 2 <= stopped_at < 400 and f"stopped by SIGTERM after iteration {stopped_at}" in err_text
    assert json.loads(log.read_text().splitlines()[-1])["iter"] == stopped_at  # every step logged, none lost
    assert not (work / WORK_DIR_LOCK).exists()

    # the lock is gone with the run: the resume goes ahead (two more iterations) and cleans up
    assert main([*argv, "--resume", f"schedule.iters={stopped_at + 2}"]) == 0
    assert not planted.exists()
    assert json.loads(log.read_text().splitlines()[-1])["iter"] == stopped_at + 2


_HOLD_LOCK = """
import sys, time
from semask.engine.lock import FolderLock
lock = FolderLock(sys.argv[1], "x.lock", "semask predict", "--out")
print("held", flush=True)
time.sleep(120)
"""


def test_a_lock_nobody_holds_is_taken_over(tmp_path: Path, caplog) -> None:
    folder = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(folder), "hold"], env=ENV, cwd=tmp_path, stdout=subprocess.PIPE
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        with pytest.raises(FolderLockedError) as info:
            FolderLock(folder, "x.lock", "semask predict", "--out")
        message = str(info.value)
        assert (
            f"another semask predict is running in {folder}: process {holder.pid} on {socket.gethostname()}" in message
        )
        assert "hold)" in message and "use another --out" in message
        holder.kill()  # kill -9: no clean-up, the lock file stays
        holder.wait()
    finally:
        holder.kill()
    assert json.loads((folder / "x.lock").read_text())["pid"] == holder.pid
    with FolderLock(folder, "x.lock", "semask predict", "--out"):  # the kernel dropped its flock: taken over
        assert json.loads((folder / "x.lock").read_text())["pid"] == os.getpid()
    assert f"taking over the lock of process {holder.pid}" in caplog.text
    assert not (folder / "x.lock").exists()
    # a file naming a live process (its id reused) on another host, held by nobody: taken over too
    (folder / "x.lock").write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": "yesterday"}))
    with FolderLock(folder, "x.lock", "semask predict", "--out"):
        assert json.loads((folder / "x.lock").read_text())["pid"] == os.getpid()
    assert "taking over the lock of process 1 on elsewhere started yesterday" in caplog.text


# ----------------------------------------------------------------------------- torchrun


def _worker_pids(launcher: int) -> dict[int, int]:
    """rank -> pid of the torchrun workers below ``launcher``."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        ppid = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("PPid:"))
        rank = next((int(v[5:]) for v in environ if v.startswith(b"RANK=")), None)
        if ppid == launcher and rank is not None:
            found[rank] = int(entry.name)
    return found


def test_torchrun_ranks_stop_together_when_one_gets_sigterm(data: Path, tmp_path: Path) -> None:
    cfg = tiny_config(data, "schedule.iters=400", "train.eval_interval=1000", "train.ckpt_interval=1000")
    config = dump_config(cfg, tmp_path / "ddp.yaml")
    work = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += ["-m", "semask.cli", "train", str(config), "--work-dir", str(work), "--no-progress"]
    proc = subprocess.Popen(cmd, env=ENV, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_for(lambda: _lines(work / "metrics.jsonl") >= 2, "two logged iterations", proc)
        workers = _worker_pids(proc.pid)
        assert sorted(workers) == [0, 1]
        os.kill(workers[1], signal.SIGTERM)  # only rank 1 gets it
        _, err = proc.communicate(timeout=180)
    finally:
        proc.kill()
    err_text = err.decode()
    assert proc.returncode != 0 and "exitcode  : 143" in err_text, err_text[-4000:]
    assert "resume with: torchrun --nproc_per_node 2 -m semask.cli train" in err_text
    state = load_training_checkpoint(work / "checkpoints" / "latest.pth")
    assert len(state["rng"]) == 2 and 2 <= state["iteration"] < 400  # rank 0 wrote it, with both ranks' RNGs
    assert json.loads((work / "metrics.jsonl").read_text().splitlines()[-1])["iter"] == state["iteration"]
    resume = [*cmd, "--resume", f"schedule.iters={state['iteration'] + 2}"]
    result = subprocess.run(resume, env=ENV, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-4000:]
    digests = json.loads((work / "summary.json").read_text())["parameter_digests"]
    assert len(digests) == 2 and digests[0] == digests[1]


_AGREE = """
import json, os, signal, sys
from datetime import timedelta
import torch
import torch.distributed as dist
from semask.engine.distributed import agree_stop, all_reduce_mean, cleanup_distributed, init_distributed

rank, got = int(os.environ["RANK"]), {}
for backend, port in zip(("gloo", "cpu:gloo,cuda:gloo"), sys.argv[1:]):
    os.environ["MASTER_PORT"] = port
    if backend != "gloo":  # a default group that is not plain gloo, as NCCL's: a gloo side group is made
        dist.init_process_group(backend, init_method="env://", timeout=timedelta(seconds=60))
    info = init_distributed("cpu", timedelta(seconds=60))
    mean = all_reduce_mean(torch.tensor([float(rank)]), info)  # the default group, between the agreements
    got[backend] = {
        "world": info.cpu_group is dist.group.WORLD,
        "backend": dist.get_backend(info.cpu_group),
        "mean": mean.item(),
        "agreed": [agree_stop(signal.SIGTERM if rank == 1 else 0, info), agree_stop(0, info)],
    }
    cleanup_distributed()
print(json.dumps(got), flush=True)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_ranks_agree_to_stop_over_a_gloo_group(monkeypatch) -> None:
    """agree_stop runs every step, so it reduces a CPU tensor over a gloo group: the default group
    when that is gloo, else a gloo side group made at start-up (NCCL runs: no CUDA sync per step).
    One process has no group and needs none."""
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    one = init_distributed("cpu")
    assert one.cpu_group is None and agree_stop(signal.SIGUSR1, one) == signal.SIGUSR1
    assert not torch.distributed.is_initialized()

    ports = [str(_free_port()), str(_free_port())]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _AGREE, *ports],
            env={**ENV, "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in (0, 1)
    ]
    try:
        outs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    results = [json.loads(out) for out, _ in outs]
    assert results[0] == results[1]  # every rank the same
    agreed = [signal.SIGTERM, 0]  # rank 1's signal stops rank 0 too; the next step nobody stops
    assert results[0]["gloo"] == {"world": True, "backend": "gloo", "mean": 0.5, "agreed": agreed}
    assert results[0]["cpu:gloo,cuda:gloo"] == {"world": False, "backend": "gloo", "mean": 0.5, "agreed": agreed}


@pytest.mark.slow
def test_a_stopped_rank_fails_the_others_after_the_collective_timeout(data: Path, tmp_path: Path) -> None:
    """A rank frozen by SIGSTOP (a hung node): the others fail after train.dist_timeout (5 s here,
    600 s by default, PyTorch's own default is 30 minutes), naming the setting and the last checkpoint."""
    cfg = tiny_config(data, "schedule.iters=400", "train.eval_interval=1000", "train.ckpt_interval=1000")
    config = dump_config(cfg, tmp_path / "ddp.yaml")
    work = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "semask.cli"]
    cmd += ["train", str(config), "--work-dir", str(work), "--no-progress", "train.dist_timeout=5"]
    proc = subprocess.Popen(cmd, env=ENV, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_for(lambda: _lines(work / "metrics.jsonl") >= 2, "two logged iterations", proc)
        workers = _worker_pids(proc.pid)
        os.kill(workers[1], signal.SIGSTOP)
        stopped = time.monotonic()
        _wait_for(lambda: not Path(f"/proc/{workers[0]}").exists(), "rank 0 to fail", timeout=60)
        assert time.monotonic() - stopped < 30
        os.kill(workers[1], signal.SIGKILL)  # what torchrun does too, after its shutdown timeout
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    text = err.decode()
    assert "a collective that waits 5 s for another process fails the run" in (work / "train.log").read_text()
    assert "semask train: error: process 0: another process did not reach a collective within " in text, text[-3000:]
    assert "train.dist_timeout=5 s" in text and "the last checkpoint is None" in text


EXIT_SCRIPT = """
import sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from test_train import tiny_config
import semask.engine.trainer as trainer

data, failure = Path(sys.argv[1]), sys.argv[2]
if failure == "worker":  # a training image no worker can read
    path = data / "images" / "train" / "00000.png"
    path.write_bytes(path.read_bytes()[:40])
else:  # the main process fails inside a step, with the worker pool running
    def broken(self, batches, it):
        next(batches)
        raise RuntimeError("a step failed")
    trainer._Trainer._step = broken
cfg = tiny_config(data, "schedule.iters=4", "data.check=none", "data.num_workers=2", "train.batch_size=2")
try:
    trainer.train(cfg, data.parent / "work", progress=False)
except Exception as exc:
    held = exc  # a held traceback keeps the loader's iterator, and so its workers, alive
    print("failed:", type(exc).__name__, flush=True)
"""


@pytest.mark.parametrize("failure", ["worker", "step"])
def test_a_failed_run_exits_although_its_workers_ignore_sigterm(failure: str, tmp_path: Path) -> None:
    """Workers ignore SIGTERM (the main process finishes the step), so the terminate() with which
    multiprocessing ends them at exit cannot: the run must end its worker pool itself."""
    data = make_context_dataset(tmp_path / "data", num_train=6, num_val=2, size=48, seed=3)
    script = EXIT_SCRIPT.format(tests=str(Path(__file__).parent))
    proc = subprocess.run(
        [sys.executable, "-c", script, str(data), failure], env=ENV, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("failed: " + ("DataError" if failure == "worker" else "RuntimeError"))
