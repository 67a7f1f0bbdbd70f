"""Sweeps: a base config, variants (a grid or a zip of overrides, or named ones), several seeds.

The seeds of one variant, and the variants that differ only in learning rate or weight decay, can train
together in one compiled program (`cnn.train.fit_together`: `jax.vmap` over parameters, optimizer state and
random keys), each run with its own shuffling, dropout and early stopping, as sequential runs of `fit`
would do. `--together auto` measures which is fastest on this machine (`cnn.studies.grouping`: vmapped with
XLA's grouped convolutions, vmapped with the convolutions as batched matrix products, or one after another)
and says which it chose. Every (variant, seed) run gets an ordinary run directory (config.json, history.json,
results.json, curves.png, a checkpoint of its best epoch), so `restore_run` and `python -m cnn viz` work
on it. Re-running a sweep skips finished runs and resumes unfinished ones; a variant that fails is
recorded in its `error.json` and the sweep goes on.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cnn.analysis.plots import plot_sweep
from cnn.config import DATA_FIELDS, TrainConfig, field_default
from cnn.data.load import load_dataset
from cnn.data.spec import DataSpec, Splits
from cnn.engine.state import model_for
from cnn.engine.vmap import TOGETHER_FIELDS, Members
from cnn.errors import Interrupted, RunsFailed, SweepError, WorkdirBusy
from cnn.runs.folder import config_differences, saved_spec, write_json
from cnn.runs.lock import wait_while_busy
from cnn.runs.outputs import check_output
from cnn.studies.ahead import Ahead, check_compile_ahead
from cnn.studies.grid import Variant, resolve
from cnn.studies.grouping import CONV, MODES, choose
from cnn.studies.tables import collect, earlier_rows, write_tables
from cnn.train import fit, fit_together

# ------------------------------------------------------------------------------------------ the sweep
TOGETHER = ("auto", *MODES)


def check_together(together: str) -> None:
    """Refuses a `--together` that is not one of `TOGETHER` (SweepError naming them)."""
    if together not in TOGETHER:
        raise SweepError(f"together: expected one of {', '.join(TOGETHER)}, got {together!r}")


def seeds_mode(together: str, config: TrainConfig, spec: DataSpec, runs: int) -> str:
    """How `runs` runs of `config` train: one of `cnn.studies.grouping.MODES`; 'auto' measures which is
    fastest here (remembered per machine and network, see `cnn.studies.grouping.choose`) and says so."""
    check_together(together)
    if together != "auto":
        return together
    if runs == 1:
        return "sequential"
    mode, rates = choose(config, spec, runs)
    measured = ", ".join(f"{m} {r:,.0f}" for m, r in sorted(rates.items(), key=lambda kv: -kv[1]))
    print(f"{runs} runs of {config.model} at batch {config.batch_size}: {mode} (measured img/s: {measured})")
    return mode


def together_groups(variants: Sequence[Variant], configs: Sequence[TrainConfig]) -> list[list[int]]:
    """The variants (their indices) that can train as one program: equal but for `TOGETHER_FIELDS`."""
    groups: dict[str, list[int]] = {}
    for i, config in enumerate(configs):
        rest = {k: v for k, v in config.to_dict().items() if k not in TOGETHER_FIELDS}
        groups.setdefault(json.dumps(rest, sort_keys=True, default=str), []).append(i)
    return list(groups.values())


def run_sweep(
    base: dict[str, Any],
    variants: Sequence[Variant],
    seeds: Sequence[int],
    splits: Splits,
    out: str | Path,
    together: str = "auto",
    storage: str | None = None,
    heartbeat: float = 10.0,
    collect_only: bool = False,
    compile_ahead: str = "auto",
) -> list[dict[str, Any]]:
    """Runs every variant for every seed (skipping finished runs) and writes the sweep's tables and plots.

    `together`: how runs train, see `seeds_mode`: vmapped, the seeds of a variant and the variants that
    differ only in learning rate or weight decay are one program. `storage`: a database URL whose queue
    this process shares with the sweep's other workers (`run_queued`); the tables are written by the one
    that sees every run done. `collect_only`: no training, the tables of the runs there. `compile_ahead`:
    one of `cnn.studies.ahead.SETTINGS`, whether the next training's programs compile while one trains."""
    out = check_output(out, flag="--out", folder=True)  # a run's folder is no sweep's
    check_compile_ahead(compile_ahead)
    configs = resolve(base, variants)  # every error before any training
    if not seeds:
        raise SweepError("seeds: expected at least one seed")
    for variant, config in zip(variants, configs, strict=True):
        try:
            model_for(config, splits.spec)  # the shapes, now that the data is known
        except ValueError as e:
            raise SweepError(f"variant {variant.name}: {e}") from None
    finished = {  # every run folder checked before any training: a sweep reuses only its own runs
        (i, s): reusable(out / v.name / f"seed{s}", dataclasses.replace(c, seed=s), splits.spec)
        for i, (v, c) in enumerate(zip(variants, configs, strict=True))
        for s in seeds
    }
    out.mkdir(parents=True, exist_ok=True)
    writes = True
    if storage is not None and not collect_only:
        definition = {"base": base, "variants": {v.name: v.overrides for v in variants}, "seeds": list(seeds)}
        definition |= {"together": together, "data": splits.spec.to_dict()}
        parts = queue_parts(variants, configs, seeds, together)
        writes = run_queued(storage, heartbeat, definition, parts, variants, configs, splits, out, together)
    if storage is None and not collect_only:
        train_groups(variants, configs, seeds, finished, splits, out, together, compile_ahead)
    rows = collect(out, variants, configs, seeds, splits.spec)
    rows += earlier_rows(out, {r["variant"] for r in rows})
    if writes:
        write_tables(rows, out)
        plot_sweep(rows, out)
    return rows


def train_groups(
    variants: Sequence[Variant],
    configs: Sequence[TrainConfig],
    seeds: Sequence[int],
    finished: dict[tuple[int, int], bool],
    splits: Splits,
    out: Path,
    together: str,
    compile_ahead: str,
) -> None:
    """The sweep's runs not `finished` before, group by group (`together_groups`), each group's programs
    compiled while the group before it trains (`compile_ahead`, see `cnn.studies.ahead`)."""
    groups = together_groups(variants, configs)
    pending = [
        [
            (variants[i], dataclasses.replace(configs[i], seed=s), out / variants[i].name / f"seed{s}")
            for i in group
            for s in seeds
            if not finished[i, s]
        ]
        for group in groups
    ]
    ahead = Ahead([[c for _, c, _ in runs] for runs in pending], splits, together, compile_ahead)
    for group, runs in zip(groups, pending, strict=True):
        for i in group:
            if all(finished[i, s] for s in seeds):  # an error.json of an earlier attempt: its cause is gone
                (out / variants[i].name / "error.json").unlink(missing_ok=True)
                print(f"[{variants[i].name}] finished before: skipped")
        if runs:
            mode = seeds_mode(together, runs[0][1], splits.spec, len(runs))
            _train_group(runs, splits, mode, ahead)


def queue_parts(
    variants: Sequence[Variant], configs: Sequence[TrainConfig], seeds: Sequence[int], together: str
) -> list[list[tuple[int, int]]]:
    """The sweep's runs as the queue's items, (variant index, seed) each: every run on its own with
    `--together sequential`, else each group that trains as one program (`together_groups`) whole."""
    groups = together_groups(variants, configs)
    if together == "sequential":
        return [[(i, s)] for group in groups for i in group for s in seeds]
    return [[(i, s) for i in group for s in seeds] for group in groups]


def run_queued(
    storage: str,
    heartbeat: float,
    definition: dict[str, Any],
    parts: list[list[tuple[int, int]]],
    variants: Sequence[Variant],
    configs: Sequence[TrainConfig],
    splits: Splits,
    out: Path,
    together: str,
) -> bool:
    """This worker's share of a sweep whose runs are a queue in the database `storage` (`cnn.studies.queue`,
    the sweep named after the `out` folder): it claims items until every one is done, a silent worker's
    resumed from its checkpoints; a signal releases the item in progress (its epoch saved) for another
    worker. Returns whether this worker writes the tables (every run done, and no other worker took it)."""
    from cnn.studies.queue import Queue

    work = Queue(storage, out.name, heartbeat)
    keys = [json.dumps([[variants[i].name, s] for i, s in part]) for part in parts]
    work.define(definition, keys)  # a worker of another sweep definition is refused here
    part_of = dict(zip(keys, parts, strict=True))
    for key in work.claims():
        runs = [
            (variants[i], dataclasses.replace(configs[i], seed=s), out / variants[i].name / f"seed{s}")
            for i, s in part_of[key]
        ]
        runs = [r for r in runs if not reusable(r[2], r[1], splits.spec)]
        print(f"[{work.worker}] claimed {', '.join(f'{v.name}/seed{c.seed}' for v, c, _ in runs) or key}")
        try:
            with work.holding(key):
                if runs:
                    _train_group(runs, splits, seeds_mode(together, runs[0][1], splits.spec, len(runs)))
        except BaseException:  # a signal, Ctrl-C or a crash: the item back to the queue, epochs kept
            work.release(key)
            raise
        if not work.finish(key):
            print(f"[{work.worker}] {key}: another worker had taken it over; its result stands")
    return work.take_collect()


def check_finished(rows: Sequence[dict[str, Any]], variants: Sequence[Variant]) -> None:
    """Raises RunsFailed naming the variants (of `variants`, this sweep's) with a failed or missing run."""
    names = {v.name for v in variants}
    failed = [r for r in rows if r["variant"] in names and (r["error"] or r["seeds_finished"] < r["seeds"])]
    if failed:
        raise RunsFailed(
            f"{len(failed)} of {len(names)} variant(s) failed: "
            + "; ".join(f"{r['variant']} ({r['error'] or 'unfinished'})"[:200] for r in failed)
            + ". The other variants are kept and in the tables; each failure is in its variant's error.json"
        )


def reusable(workdir: Path, config: TrainConfig, spec: DataSpec) -> bool:
    """Whether `workdir` holds a finished run of exactly `config` on the data `spec` describes (the sweep
    skips it); False for an empty folder or a run to resume (fewer epochs). Raises SweepError, naming what
    differs, when the folder holds a run of another config or data: its results would be reported as this
    sweep's."""
    config_file = workdir / "config.json"
    if not config_file.is_file():
        return False
    try:
        saved = json.loads(config_file.read_text())
        differences = config_differences(saved["config"], config) + saved_spec(saved).differences(spec)
        epochs = int(saved["config"]["epochs"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SweepError(f"{workdir}: its config.json is unreadable ({e}); give another --out") from None
    if epochs > config.epochs:
        differences.append(f"epochs: {epochs} -> {config.epochs}")
    if differences:
        raise SweepError(
            f"{workdir} holds a run of another config or data ({'; '.join(differences)}); a sweep reuses a "
            "run only when both equal its own: give another --out (or move that folder away)"
        )
    return epochs == config.epochs and (workdir / "results.json").is_file()


def _train_group(
    runs: list[tuple[Variant, TrainConfig, Path]], splits: Splits, mode: str, ahead: Ahead | None = None
) -> None:
    """The runs of one group, as `mode`; a failure is recorded in its variant's `error.json` (a group of
    several variants that fails trains each variant on its own, so that only the failing one is marked; the
    sweep goes on; a signal stops it, every run's epoch saved). `ahead`: told as each training starts."""
    names = list(dict.fromkeys(v.name for v, _, _ in runs))
    folders = {v.name: w.parent for v, _, w in runs}
    for name in names:
        (folders[name] / "error.json").unlink(missing_ok=True)
    runs = [r for r in runs if not finished_elsewhere(*r, splits.spec)]
    if not runs:
        return
    names = list(dict.fromkeys(v.name for v, _, _ in runs))
    print(f"[{', '.join(names)}] training {len(runs)} run(s) ({mode})", flush=True)
    try:
        if mode == "sequential":
            for variant, config, workdir in runs:
                if ahead is not None:
                    ahead.reached([config], Members(1), variant.name)
                fit(config, splits, workdir)
        else:
            if ahead is not None:
                ahead.reached([c for _, c, _ in runs], Members(len(runs), CONV[mode]), ", ".join(names))
            fit_together([c for _, c, _ in runs], splits, [w for _, _, w in runs], conv=CONV[mode])
    except Interrupted:
        raise
    except WorkdirBusy:  # another process took one of these runs meanwhile: wait for it, train the rest
        _train_group(runs, splits, mode, ahead)
        return
    except Exception as e:  # one failed variant must not end the sweep (a signal still does)
        signum = getattr(e, "stop_requested", None)
        if len(names) > 1 and signum is None:  # which failed: each alone (a finished epoch is resumed)
            print(f"[{', '.join(names)}] FAILED together ({type(e).__name__}); each variant on its own")
            for name in names:
                _train_group([r for r in runs if r[0].name == name], splits, mode, ahead)
            return
        for name in names:
            folders[name].mkdir(parents=True, exist_ok=True)
            write_json(
                folders[name] / "error.json",
                {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()},
            )
        print(f"[{', '.join(names)}] FAILED: {type(e).__name__}: {e} (recorded in their error.json)")
        if signum is not None:  # asked to stop while the run failed: stop, do not start the next one
            out = next(iter(folders.values())).parent
            raise Interrupted(signum, 0, out, failed=", ".join(names)) from e


def finished_elsewhere(variant: Variant, config: TrainConfig, workdir: Path, spec: DataSpec) -> bool:
    """Whether the run in `workdir` was being trained by another process (a second sweep on the same
    `--out`): waited for, then True if that process finished it (it is this sweep's result too)."""
    if not wait_while_busy(workdir):
        return False
    done = reusable(workdir, config, spec)
    if done:
        print(f"[{variant.name}] seed {config.seed}: finished by another process; taken as it is")
    return done


def data_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The data-set fields of parsed flags (see `cnn.config.DATA_FIELDS`), as JSON-able config fields."""
    fields = {name: getattr(args, name, field_default(name)) for name in DATA_FIELDS}
    fields["image_size"] = fields["image_size"] and list(fields["image_size"])
    return fields


def sweep_data(base: dict[str, Any], data_dir: Any = None, source_dir: Any = None) -> Splits:
    """The data set of a sweep's `base` fields (loaded once per process: every variant and seed shares
    it), each variant's model checked against its description before any training."""
    return load_dataset(TrainConfig(**base), data_dir=data_dir, source_dir=source_dir)
