"""The README's model-zoo table, generated from the weights registry (never written by hand).

python scripts/zoo_table.py            # print the table
python scripts/zoo_table.py --write    # replace the table between the markers in README.md
"""

from __future__ import annotations

from pathlib import Path

from semask.models.pretrained import get_pretrained, list_pretrained

START, END = "<!-- zoo:start (scripts/zoo_table.py) -->", "<!-- zoo:end -->"
README = Path(__file__).resolve().parents[1] / "README.md"


def table() -> str:
    lines = [
        "| name | data | crop | paper mIoU (s.s. / m.s.) | file | load |",
        "|---|---|---|---:|---|---|",
    ]
    for name in sorted(list_pretrained(kind="model"), key=lambda n: (not n.startswith("semask_"), n)):
        cfg = get_pretrained(name)
        miou = f"{cfg.paper_miou[0]:.2f} / {cfg.paper_miou[1]:.2f}" if cfg.paper_miou else "-"
        crop = "x".join(str(v) for v in cfg.crop_size) if cfg.crop_size else "-"
        where = f"[Drive]({cfg.source})" if cfg.gdrive_id else f"[HF]({cfg.source.rsplit('/resolve', 1)[0]})"
        lines.append(f'| `{name}` | {cfg.dataset} | {crop} | {miou} | {where} | `semask.load("{name}")` |')
    lines += [
        "",
        'ImageNet encoders (`create_model(..., backbone_weights="imagenet")`, what the recipes start from):',
        "",
    ]
    lines.append(", ".join(f"`{n}`" for n in list_pretrained(kind="backbone")))
    return "\n".join(lines)


if __name__ == "__main__":
    from readme_section import run  # beside this file: on sys.path when run as a script

    run(__doc__, table, README, START, END)
