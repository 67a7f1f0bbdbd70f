"""Where a `python -m cnn tune` study is kept: a journal file in its output folder (one study per folder,
checked before Optuna reads it), or Optuna's RDB storage in a database shared by workers on several machines,
whose heartbeats fail and retry the trial of a worker that died; and the search a study was made for,
checked when a worker joins it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cnn.errors import StorageError, TuneError
from cnn.studies.queue import STALE_BEATS, connect, database_url, differences, where

JOURNAL = "study.journal"


def check_journal(path: Path, name: str | None = None) -> None:
    """Refuses, before Optuna reads or appends anything, a journal whose complete lines are not all JSON
    objects (a damaged file, or not a journal), or one of another study than `name` (its trial folders and
    report would mix with this one's): TuneError naming the file and the line, or both studies."""
    if not path.exists():
        return
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise TuneError(
            f"{path}: not a readable Optuna journal ({e}); move it away or give another --out"
        ) from None
    for number, line in enumerate(text.splitlines(keepends=True), 1):
        if not line.endswith("\n") or not line.strip():  # a line still being written by another process
            continue
        try:
            ok = isinstance(json.loads(line), dict)
        except ValueError:
            ok = False
        if not ok:
            raise TuneError(
                f"{path}: line {number} is not an Optuna journal record (the file is damaged, or not a "
                "journal); nothing was written to it: move it away or give another --out"
            )
    if name is not None:
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        names = [s.study_name for s in JournalStorage(JournalFileBackend(str(path))).get_all_studies()]
        if names and names[0] != name:
            raise TuneError(other_study(path.parent, names[0], name))


def other_study(out: Path, holder: str, name: str) -> str:
    """Why study `name` may not go into `out`, which holds study `holder`, and the fix."""
    return (
        f"--out {out} holds the study {holder!r} (its journal, trial folders and trials.md); study {name!r} "
        f"needs a folder of its own: give another --out, or --study {holder} to continue that one"
    )


def rdb_storage(url: str, heartbeat: float) -> Any:
    """Optuna's RDB storage on `url` (an unreachable server refused in one line naming host and port, a
    database set up by another Optuna version named): every trial beats a heartbeat, and one silent for
    `STALE_BEATS` beats (its worker killed, its machine gone) is failed and tried again with its point and
    its folder (Optuna's RetryHeartbeatStaleTrialCallback; `objective` resumes its last saved epoch)."""
    import warnings

    import optuna.storages
    from optuna.exceptions import ExperimentalWarning
    from optuna.storages import RDBStorage

    warnings.filterwarnings("ignore", category=ExperimentalWarning)  # heartbeats: stable since Optuna 2.9
    connect(url).dispose()
    beat = max(1, round(heartbeat))  # Optuna counts whole seconds
    retry = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)  # its name since Optuna 4.9
    retry = retry or optuna.storages.RetryFailedTrialCallback
    try:
        return RDBStorage(
            database_url(url),
            heartbeat_interval=beat,
            grace_period=STALE_BEATS * beat,
            heartbeat_stale_trial_callback=retry(max_retry=3),
        )
    except RuntimeError as e:  # its tables were set up by another Optuna version
        reason = str(e).splitlines()[0]
        raise StorageError(f"--storage {where(url)}: {reason}") from None


def check_study(study: Any, direction: str, space: dict[str, str], base: dict[str, Any]) -> None:
    """Records the search (direction, `space` as FIELD: KIND(ARGS), base fields) with a new study; refuses
    to join one made for another search, naming what differs (its trials would not compare with these)."""
    search = {
        "direction": direction,
        "space": space,
        "base": json.loads(json.dumps(base, default=str)),
    }
    saved = study.user_attrs.get("search")
    if saved is None:
        study.set_user_attr("search", search)
        saved = {**search, "direction": study.direction.name.lower()}
    changed = differences(saved, search)
    if changed:
        raise TuneError(
            f"the study {study.study_name!r} exists with another search ({'; '.join(changed)[:600]}); give "
            "the same --space, --base and data set to join it, or another --study for a new one"
        )
