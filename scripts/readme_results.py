"""Regenerates the README's results block from runs: `python scripts/readme_results.py RUN_DIR...`."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
START, END = "<!-- results:start -->", "<!-- results:end -->"


def row(workdir: Path) -> str:
    results = json.loads((workdir / "results.json").read_text())
    meta = json.loads((workdir / "config.json").read_text())
    config, host, device = meta["config"], meta["host"], meta["device"]
    machine = f"{host['cores']}-core {host['cpu']} ({device['platform']}), jax {meta['versions']['jax']}"
    return (
        f"| `{config['model']}` | {results['test_accuracy']:.4f} | {results['val_accuracy']:.4f} | "
        f"{results['best_epoch']} / {results['epochs_run']} | {results['train_seconds']:.0f} s | "
        f"{results['images_per_second']:,.0f} | {machine} | `{(meta['git_commit'] or 'unknown')[:8]}` |"
    )


def main(workdirs: list[str]) -> None:
    header = (
        "| model | test accuracy | val accuracy | best epoch / epochs run | train time | train images/s "
        "| machine | commit |\n|---|---|---|---|---|---|---|---|"
    )
    table = "\n".join([header, *(row(Path(w)) for w in workdirs)])
    text = README.read_text()
    block = f"{START}\n{table}\n{END}"
    README.write_text(re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: block, text, flags=re.S))
    print(table)


if __name__ == "__main__":
    main(sys.argv[1:])
