"""Regenerates the README's tables (never typed by hand).

python scripts/readme_tables.py results RUN_DIR...   # results of finished runs
python scripts/readme_tables.py zoo                  # the model zoo: parameters, MACs, memory
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def results_row(workdir: Path) -> str:
    results = json.loads((workdir / "results.json").read_text())
    meta = json.loads((workdir / "config.json").read_text())
    config, host, device = meta["config"], meta["host"], meta["device"]
    machine = f"{host['cores']}-core {host['cpu']} ({device['platform']}), jax {meta['versions']['jax']}"
    return (
        f"| `{config['model']}` | {results['test_accuracy']:.4f} | {results['val_accuracy']:.4f} | "
        f"{results['best_epoch']} / {results['epochs_run']} | {results['train_seconds']:.0f} s | "
        f"{results['images_per_second']:,.0f} | {machine} | `{(meta['git_commit'] or 'unknown')[:8]}` |"
    )


def results_table(workdirs: list[str]) -> str:
    header = (
        "| model | test accuracy | val accuracy | best epoch / epochs run | train time | train images/s "
        "| machine | commit |\n|---|---|---|---|---|---|---|---|"
    )
    return "\n".join([header, *(results_row(Path(w)) for w in workdirs)])


def zoo_table() -> str:
    from cnn.models import MODELS, build_model
    from cnn.summary import layer_rows, totals

    lines = [
        "| model | what | trainable params | non-trainable | MACs / image | activations / image |",
        "|---|---|---|---|---|---|",
    ]
    for name in MODELS:
        model = build_model(name)
        t = totals(layer_rows(model))
        what = " ".join((MODELS[name].__doc__ or "").strip().split("\n\n")[0].split())
        lines.append(
            f"| `{name}` | {what} | {t.trainable:,} | {t.non_trainable:,} | {t.macs / 1e6:.2f} M | "
            f"{t.activation_bytes / 1024:,.0f} KiB |"
        )
    return "\n".join(lines)


def replace_block(block: str, table: str) -> None:
    start, end = f"<!-- {block}:start -->", f"<!-- {block}:end -->"
    text = README.read_text()
    if start not in text:
        raise SystemExit(f"README.md has no {start} marker")
    README.write_text(
        re.sub(
            re.escape(start) + ".*?" + re.escape(end), lambda _: f"{start}\n{table}\n{end}", text, flags=re.S
        )
    )
    print(table)


if __name__ == "__main__":
    command, *args = sys.argv[1:] or ["help"]
    if command == "results" and args:
        replace_block("results", results_table(args))
    elif command == "zoo":
        replace_block("zoo", zoo_table())
    else:
        raise SystemExit(__doc__)
