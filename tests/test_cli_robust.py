"""Issue 12: overrides anywhere on the command line, and a used work dir is never silently mixed into."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from test_train import tiny_config

from semask.cli import fresh_dir, main
from semask.config import dump_config
from semask.data import make_context_dataset
from semask.engine.trainer import train

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A finished 4-iteration run (Python API) and its YAML config."""
    root = tmp_path_factory.mktemp("robust")
    data = make_context_dataset(root / "data", num_train=8, num_val=3, size=64, seed=1)
    cfg = tiny_config(data, "schedule.iters=4", "train.eval_interval=2", "train.ckpt_interval=2")
    config = dump_config(cfg, root / "tiny.yaml")
    work = root / "work"
    train(cfg, work, progress=False)
    return {"root": root, "config": config, "work": work}


def _train_iters(work: Path) -> list[int]:
    records = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    return [r["iter"] for r in records if r["type"] == "train"]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_train_accepts_overrides_after_options_in_order(run: dict[str, Path]) -> None:
    work = run["root"] / "after_options"
    # README style: overrides after the options; the later of two settings of one key wins
    assert (
        main(
            [
                "train",
                str(run["config"]),
                "schedule.iters=3",
                "--work-dir",
                str(work),
                "--no-progress",
                "schedule.iters=2",
            ]
        )
        == 0
    )
    assert _train_iters(work) == [1, 2]
    assert json.loads((work / "summary.json").read_text())["iterations"] == 2


def test_unknown_tokens_still_get_argparse_errors(run: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    for extra in ("--bogus", "notanoverride", "=x"):
        with pytest.raises(SystemExit) as exc:
            main(["train", str(run["config"]), "--work-dir", str(run["root"] / "never"), extra])
        assert exc.value.code == 2
        assert f"unrecognized arguments: {extra}" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # commands without overrides take none
        main(["info", "semask_swin_t_fpn", "model.x=1"])
    assert "unrecognized arguments: model.x=1" in capsys.readouterr().err
    assert not (run["root"] / "never").exists()


def test_eval_accepts_overrides_after_options(run: dict[str, Path]) -> None:
    root, model = run["root"], str(run["work"] / "model")
    base = ["eval", str(run["config"]), "--checkpoint", model, "--num-workers", "0", "--out"]
    assert main([*base, str(root / "val.json")]) == 0
    assert main([*base, str(root / "split.json"), "--split", "train"]) == 0
    assert main([*base, str(root / "override.json"), "data.val_split=train"]) == 0
    val, split, override = (json.loads((root / f"{n}.json").read_text()) for n in ("val", "split", "override"))
    assert override["aAcc"] == split["aAcc"] and override["IoU"] == split["IoU"]
    assert override["aAcc"] != val["aAcc"]  # the override took effect: 8 train images, not the 3 val ones


def test_a_used_work_dir_is_refused_and_left_alone(run: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    work = run["work"]
    before = _snapshot(work)
    assert main(["train", str(run["config"]), "--work-dir", str(work), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    for part in (str(work), "already holds a training run", "--resume", "--work-dir", "--overwrite"):
        assert part in err, part
    with pytest.raises(FileExistsError, match="already holds a training run"):  # the Python API alike
        train(run["config"], work, progress=False)
    assert _snapshot(work) == before


def test_overwrite_moves_the_old_run_aside(run: dict[str, Path]) -> None:
    work = run["root"] / "overwrite" / "w"
    shutil.copytree(run["work"], work)
    old = _snapshot(work)
    assert (
        main(["train", str(run["config"]), "--work-dir", str(work), "--no-progress", "--overwrite", "schedule.iters=2"])
        == 0
    )
    moved = sorted(work.parent.glob("w.old-*"))
    assert len(moved) == 1 and moved[0].name[len("w.old-") :].replace("-", "").isdigit()
    assert _snapshot(moved[0]) == old  # every old file kept, byte for byte
    assert _train_iters(work) == [1, 2]  # the new run starts clean, no old records mixed in
    assert sorted(p.name for p in (work / "checkpoints").glob("iter_*.pth")) == ["iter_00000002.pth"]
    # a second --overwrite within the same second gets its own name, nothing is replaced
    assert (
        main(["train", str(run["config"]), "--work-dir", str(work), "--no-progress", "--overwrite", "schedule.iters=2"])
        == 0
    )
    assert len(list(work.parent.glob("w.old-*"))) == 2


def test_resume_still_continues_a_used_work_dir(run: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    work = run["root"] / "resume"
    shutil.copytree(run["work"], work)
    assert main(["train", str(run["config"]), "--work-dir", str(work), "--overwrite", "--resume"]) == 1
    assert "pass only one" in capsys.readouterr().err
    assert (
        main(["train", str(run["config"]), "--work-dir", str(work), "--no-progress", "--resume", "schedule.iters=6"])
        == 0
    )
    assert _train_iters(work) == [1, 2, 3, 4, 5, 6]
    assert not list(work.parent.glob("resume.old-*"))


def test_demo_picks_a_fresh_folder_or_refuses_a_used_one(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    base = tmp_path / "semask_demo"
    assert fresh_dir(base) == base
    (base / "work").mkdir(parents=True)
    (base / "work" / "metrics.jsonl").write_text("")
    assert fresh_dir(base) == tmp_path / "semask_demo-2"
    (tmp_path / "semask_demo-2" / "work" / "checkpoints").mkdir(parents=True)
    assert fresh_dir(base) == tmp_path / "semask_demo-3"
    assert main(["demo", "--quick", "--no-progress", "--out", str(base)]) == 1
    err = capsys.readouterr().err
    assert f"{base} already holds a demo run" in err and "--out" in err
    assert sorted(p.name for p in base.iterdir()) == ["work"]  # nothing generated into it
