"""Regenerates the tables of the README and of the documentation pages (never typed by hand). A table lives
between `<!-- NAME:start -->` and `<!-- NAME:end -->` markers in whichever file holds them (README.md, a page
of docs/ or experiments/README.md); each command rewrites its block where it is.

python scripts/readme_tables.py results RUN_DIR...   # results of finished runs
python scripts/readme_tables.py results --append RUN_DIR...   # rows added below the table's rows
python scripts/readme_tables.py zoo                  # the model zoo and the famous networks: parameters, MACs
python scripts/readme_tables.py placement RUN_DIR...  # data on the device vs streamed from the host
python scripts/readme_tables.py bench FILE [BLOCK]   # a benchmark report (block: bench or bench-gpu)
python scripts/readme_tables.py layout               # every module of cnn/, lowest layer first, and its job
python scripts/readme_tables.py packages             # the README's map: one line per package, and its job
python scripts/readme_tables.py overhead FILE        # where a small run's wall time goes (bench --overhead)
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
EXPERIMENTS = ROOT / "experiments"
DOCS = ROOT / "docs"


def block_files() -> list[Path]:
    """Every file that may hold a generated block: the README, the documentation pages, the experiments'
    README."""
    return [README, *sorted(DOCS.rglob("*.md")), EXPERIMENTS / "README.md"]


def block_file(block: str) -> Path:
    """The file that holds the markers of `block`."""
    for path in block_files():
        if path.is_file() and f"<!-- {block}:start -->" in path.read_text():
            return path
    raise SystemExit(
        f"no file holds the block {block!r} (<!-- {block}:start --> ... <!-- {block}:end -->): "
        f"add its markers to README.md or a page of docs/"
    )


def results_row(workdir: Path) -> str:
    results = json.loads((workdir / "results.json").read_text())
    meta = json.loads((workdir / "config.json").read_text())
    config, host, device = meta["config"], meta["host"], meta["device"]
    if device["platform"] == "cpu":
        machine = f"{host['cores']}-core {host['cpu']} (cpu), jax {meta['versions']['jax']}"
    else:
        machine = f"{device['kind']} ({device['platform']}), jax {meta['versions']['jax']}"
    args = config.get("model_args") or {}
    model = f"`{config['model']}`" + (f" `{json.dumps(args, separators=(',', ':'))}`" if args else "")
    data = config.get("dataset", "fashion_mnist")
    if data != "fashion_mnist" or config.get("image_size") or config.get("channels") not in (None, 1):
        shape = "×".join(map(str, meta.get("data", {}).get("image_shape") or config.get("input_shape") or ()))
        model += f" on `{Path(data).name if '/' in data else data}`" + (f" {shape}" if shape else "")
    return (
        f"| {model} | {results['test_accuracy']:.4f} | {results['val_accuracy']:.4f} | "
        f"{results['best_epoch']} / {results['epochs_run']} | {results['train_seconds']:.0f} s | "
        f"{results['images_per_second']:,.0f} | {machine} | `{(meta['git_commit'] or 'unknown')[:8]}` |"
    )


def results_table(workdirs: list[str], append: bool = False) -> str:
    header = (
        "| model | test accuracy | val accuracy | best epoch / epochs run | train time | train images/s "
        "| machine | commit |\n|---|---|---|---|---|---|---|---|"
    )
    if append:  # the rows already in the README stay (their run folders may be gone)
        header = block_text("results")
    return "\n".join([header, *(results_row(Path(w)) for w in workdirs)])


def placement_table(workdirs: list[str]) -> str:
    """Training speed with the images on the device or streamed from the host, from finished runs."""
    lines = [
        "| input | images on | train images/s | train time | test accuracy | machine | commit |",
        "|---|---|---|---|---|---|---|",
    ]
    for w in workdirs:
        results = json.loads((Path(w) / "results.json").read_text())
        meta = json.loads((Path(w) / "config.json").read_text())
        config, host = meta["config"], meta["host"]
        shape = "×".join(
            map(str, meta.get("data", {}).get("image_shape") or config.get("input_shape") or (28, 28, 1))
        )
        lines.append(
            f"| {shape} | {config['data_placement']} | {results['images_per_second']:,.0f} | "
            f"{results['train_seconds']:.1f} s | {results['test_accuracy']:.4f} | {host['cores']}-core "
            f"{host['cpu']}, jax {meta['versions']['jax']} | `{(meta['git_commit'] or 'unknown')[:8]}` |"
        )
    return "\n".join(lines)


def block_text(block: str, path: Path | None = None) -> str:
    """What a block holds between its markers, in `path` or in whichever file holds it."""
    start, end = f"<!-- {block}:start -->", f"<!-- {block}:end -->"
    text = (path or block_file(block)).read_text()
    return text[text.index(start) + len(start) : text.index(end)].strip()


# Where each network comes from: trained in the sources, only named there, or added by this project.
IN_THE_SOURCES = {
    "seed_cnn": "trained",
    "homl_cnn": "shown",
    "lecture_cnn": "trained",
    "lenet5": "named (architecture added)",
    "mlp": "compared",
    "convnet": "added",
    "vgg_bn": "added",
    "wide_resnet": "added",
    "transfer": "mechanism",
    "inception_v3": "transfer backbone",
    "vgg16": "named",
    "resnet50": "listed",
    "mobilenet_v2": "listed",
}


def zoo_table() -> str:
    from cnn.models.registry import MODELS, build_model, default_input_shape
    from cnn.models.summary import layer_rows, totals

    lines = [
        "| model | in the sources | what | input | trainable params | non-trainable | MACs / image "
        "| activations / image |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in MODELS:
        shape = default_input_shape(name)
        model = build_model(name, input_shape=shape)
        t = totals(layer_rows(model, shape))
        what = " ".join((MODELS[name].__doc__ or "").strip().split("\n\n")[0].split())
        lines.append(
            f"| `{name}` | {IN_THE_SOURCES.get(name, 'added')} | {what} | {'×'.join(map(str, shape))} | "
            f"{t.trainable:,} | {t.non_trainable:,} | "
            f"{t.macs / 1e6:.2f} M | {t.activation_bytes / 1024:,.0f} KiB |"
        )
    return "\n".join(lines)


def famous_table() -> str:
    """The famous networks as Keras builds them without their top, and their published weight files."""
    from cnn.models.applications.networks import APPLICATIONS, application, imagenet_file
    from cnn.models.summary import layer_rows, totals

    lines = [
        "| network | layers (Keras' less the input) | trainable | non-trainable | MACs at 224×224 "
        "| min input | Keras' weight file (no top) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, spec in APPLICATIONS.items():
        shape = (224, 224, 3)
        rows = layer_rows(application(name, input_shape=shape, include_top=False), shape)
        t = totals(rows)
        lines.append(
            f"| `{name}` | {len(rows)} | {t.trainable:,} | {t.non_trainable:,} | {t.macs / 1e9:.2f} G | "
            f"{spec.min_size}×{spec.min_size} | `{imagenet_file(name)[0]}` |"
        )
    return "\n".join(lines)


def experiment_block(name: str) -> str | None:
    """An experiment's table and plots, as written by its last run, or None if it has not run."""
    results = EXPERIMENTS / "results" / name
    if not (results / "results.md").is_file():
        return None
    parts = [(results / "results.md").read_text().strip()]
    if (results / "shift_accuracy.md").is_file():
        parts += [
            "Test accuracy by shift (mean ± std over seeds):",
            (results / "shift_accuracy.md").read_text().strip(),
        ]
    plots = [
        ("accuracy vs shift", "shift_accuracy.png"),
        ("few-shot transfer", "transfer.png"),
        ("validation curves", "val_curves.png"),
        ("accuracy vs MACs", "accuracy_vs_macs.png"),
        ("test photos, own backbone", "own_test_photos.png"),
        ("test photos, from scratch", "scratch_test_photos.png"),
        ("test photos, InceptionV3 backbone", "inception_test_photos.png"),
    ]
    shown = [(alt, file) for alt, file in plots if (results / file).is_file()]
    pictures = " ".join(f"![{alt}](results/{name}/{file})" for alt, file in shown)
    return "\n\n".join(parts + ([pictures] if pictures else []))


def bench_table(path: str) -> str:
    from cnn.studies.bench import format_table

    report = json.loads(Path(path).read_text())
    host, device = report["host"], report["device"]
    machine = (
        f"{host['cores']}-core {host['cpu']} (cpu)"
        if device["platform"] == "cpu"
        else f"{device['kind']} ({device['platform']}), {host['cores']}-core host"
    )
    return (
        format_table(report) + f"\n\nMachine: {machine}, "
        f"jax {report['versions']['jax']}; command: `{report['command']}`; commit "
        f"`{(report['git_commit'] or 'unknown')[:8]}`."
    )


def module_job(path: Path) -> str:
    """The first sentence of a module's docstring: what it is for."""
    import ast

    doc = " ".join((ast.get_docstring(ast.parse(path.read_text())) or "").split())
    end = re.search(r"(?<!\bal)(?<!e\.g)(?<!i\.e)\.(\s|$)", doc)
    return (doc[: end.start()] if end else doc).replace("|", "\\|")


def layout_table() -> str:
    """Every module of `cnn/`, package by package from the bottom and floor by floor inside each (the order
    `tests/test_layering.py` holds: a module imports only from lower floors and packages), with its job."""
    sys.path.insert(0, str(ROOT))
    from tests.test_layering import FLOORS, PACKAGES, module_paths

    paths = module_paths()
    lines = ["| package | module | what it is for |", "|---|---|---|"]
    for package in PACKAGES:
        floors = FLOORS.get(package, [{package}])
        for floor in floors:
            for name in sorted(n for n in floor if n in paths):
                shown = str(paths[name].relative_to(ROOT))
                where = f"`{package}/`" if package in FLOORS else "top"
                lines.append(f"| {where} | `{shown}` | {module_job(paths[name])} |")
    return "\n".join(lines)


def packages_table() -> str:
    """The README's map of the package: the top modules a reader starts from, then one line per package (the
    first sentence of its `__init__` docstring), from the bottom of the layer order."""
    sys.path.insert(0, str(ROOT))
    from tests.test_layering import FLOORS, PACKAGES, module_paths

    paths = module_paths()
    lines = ["| where | what it holds |", "|---|---|"]
    for package in PACKAGES:
        if package in FLOORS:
            lines.append(f"| `cnn/{package}/` | {module_job(paths[package])} |")
        elif package not in ("__init__", "__main__"):
            lines.append(f"| `cnn/{package}.py` | {module_job(paths[package])} |")
    return "\n".join(lines)


def overhead_table(path: str) -> str:
    """`bench --overhead`'s JSON as the README's table, with the machine and command beside it."""
    from cnn.studies.overhead import format_overhead

    report = json.loads(Path(path).read_text())
    host, versions = report["host"], report["versions"]
    commit = (report.get("git_commit") or "?")[:8]
    return (
        format_overhead(report)
        + f"\n\nMachine: {host['cores']}-core {host['cpu']} ({report['device']['platform']}), jax "
        f"{versions['jax']}; command: `python -m cnn bench --overhead {' '.join(report['train_args'])}`; "
        f"commit `{commit}`."
    )


def replace_block(block: str, table: str, path: Path | None = None) -> None:
    """Writes `table` between the markers of `block`, in `path` or in whichever file holds them."""
    start, end = f"<!-- {block}:start -->", f"<!-- {block}:end -->"
    readme = path or block_file(block)
    text = readme.read_text()
    if start not in text:
        raise SystemExit(f"{readme} has no {start} marker")
    readme.write_text(
        re.sub(
            re.escape(start) + ".*?" + re.escape(end), lambda _: f"{start}\n{table}\n{end}", text, flags=re.S
        )
    )
    print(table)


if __name__ == "__main__":
    command, *args = sys.argv[1:] or ["help"]
    if command == "results" and args:
        append = args[0] == "--append"
        replace_block("results", results_table(args[append:], append))
    elif command == "placement" and args:
        replace_block("placement", placement_table(args))
    elif command == "zoo":
        replace_block("zoo", zoo_table())
        replace_block("famous", famous_table())
    elif command == "experiments":
        for name in (
            "padding",
            "stride",
            "pooling",
            "mlp_vs_cnn",
            "shift_robustness",
            "transfer",
            "transfer_vgg_bn",
            "face_finder",
            "inception_fashion",
        ):
            if (table := experiment_block(name)) is not None:
                replace_block(name, table, EXPERIMENTS / "README.md")
    elif command == "layout":
        replace_block("layout", layout_table())
    elif command == "packages":
        replace_block("packages", packages_table())
    elif command == "overhead" and args:  # overhead FILE
        replace_block("overhead", overhead_table(args[0]))
    elif command == "bench" and args:  # bench FILE [BLOCK]
        replace_block(args[1] if len(args) > 1 else "bench", bench_table(args[0]))
    else:
        raise SystemExit(__doc__)
