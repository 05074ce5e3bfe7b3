"""The recipe table of semask/configs/README.md, generated (never written by hand) from the packaged
recipes and the transcribed official settings (tests/official_recipes.py); a test keeps it current.

python scripts/recipe_table.py            # print the table
python scripts/recipe_table.py --write    # replace the table between the markers in semask/configs/README.md
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from semask.config import format_miou, get_recipe, paper_miou, recipe_names

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- recipes:start (scripts/recipe_table.py) -->", "<!-- recipes:end -->"
README = ROOT / "semask" / "configs" / "README.md"
BLOB = {
    "Picsart-AI-Research/SeMask-Segmentation": "https://github.com/Picsart-AI-Research/SeMask-Segmentation/blob/main/",
    "NVlabs/SegFormer": "https://github.com/NVlabs/SegFormer/blob/master/",
}


def _official() -> object:
    spec = importlib.util.spec_from_file_location("official_recipes", ROOT / "tests" / "official_recipes.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _link(repo: str, path: str) -> str:
    return f"[{path.rsplit('/', 1)[-1]}]({BLOB[repo]}{path.replace(' ', '%20')})"


def _command(name: str, gpus: int, root: str) -> str:
    launch = f"torchrun --nproc_per_node {gpus} -m semask.cli train" if gpus > 1 else "semask train"
    return f"`{launch} {name} --work-dir work_dirs/{name} data.root={root}`"


def table() -> str:
    official = _official()
    lines = [
        "| recipe | official file | per-GPU batch x GPUs | iterations | paper mIoU (s.s. / m.s.) | command |",
        "|---|---|---|---:|---:|---|",
    ]
    for name in recipe_names():
        cfg = get_recipe(name)
        batch = cfg.train.batch_size
        if name in official.OFFICIAL:  # type: ignore[attr-defined]
            o = official.OFFICIAL[name]  # type: ignore[attr-defined]
            source, gpus = _link(o["repo"], o["file"]), o["gpus"]
            if name.startswith("semask_mit"):
                source = f"none (no SeMask MiT code); the SegFormer file {source}"
        elif name in official.ABLATIONS:  # type: ignore[attr-defined]
            _, base, where, _ = official.ABLATIONS[name]  # type: ignore[attr-defined]
            o = official.OFFICIAL[base]  # type: ignore[attr-defined]
            source, gpus = f"none (ablation, paper {where}); recipe of `{base}`", o["gpus"]
        elif name in official.MASK2FORMER:  # type: ignore[attr-defined]
            path = official.MASK2FORMER[name]  # type: ignore[attr-defined]
            source = _link("Picsart-AI-Research/SeMask-Segmentation", path)
            gpus = official.MASK2FORMER_TOTAL_BATCH // batch  # type: ignore[attr-defined]
        else:  # the demo
            source, gpus = "none (the built-in demo, `semask demo`)", 1
        lines.append(
            f"| `{name}` | {source} | {batch} x {gpus} | {cfg.schedule.iters:,} | {format_miou(paper_miou(name, cfg))} "
            f"| {_command(name, gpus, 'semask_demo/data' if name == 'demo' else cfg.data.root)} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    from readme_section import run  # beside this file: on sys.path when run as a script

    run(__doc__, table, README, START, END)
