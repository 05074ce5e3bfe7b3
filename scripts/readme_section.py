"""The command line of the scripts that generate a README section between two markers
(zoo_table.py, recipe_table.py): print the section, or ``--write`` it in place."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path


def run(description: str | None, table: Callable[[], str], readme: Path, start: str, end: str) -> None:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help=f"replace the section in {readme.name} in place")
    if not parser.parse_args().write:
        print(table())
        return
    text = readme.read_text()
    if start not in text or end not in text:
        sys.exit(f"{readme} has no {start} ... {end} markers")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    readme.write_text(f"{head}{start}\n{table()}\n{end}{tail}")
