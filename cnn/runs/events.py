"""TensorBoard event files of a run, written with tensorboardX (no TensorFlow): per epoch the train and
validation loss and accuracy, the learning rate and images/s; at the end the test metrics and the run's
config as hparams, so the runs of a sweep appear side by side in TensorBoard's HParams view. A resumed run
continues its log: the events of epochs it trains again are purged (tensorboardX's `purge_step`).

`read_events` reads the scalars back without TensorBoard (for tests and notebooks)."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

EVENTS = "events"  # the folder of a run's event files
HPARAMS = "hparams"  # its subfolder with the hparams session
SCALARS = {  # history key: TensorBoard tag
    "loss": "loss/train",
    "val_loss": "loss/validation",
    "accuracy": "accuracy/train",
    "val_accuracy": "accuracy/validation",
    "lr": "learning_rate",
    "images_per_second": "images_per_second",
}


class EventLog:
    """The event files of one run in `workdir/events`. `purge`: hide every event written before (a resumed
    run writes its history again, then goes on), so TensorBoard shows each epoch once."""

    def __init__(self, workdir: str | Path, purge: bool = False):
        from tensorboardX import SummaryWriter

        self.folder = Path(workdir) / EVENTS
        self.writer = SummaryWriter(logdir=str(self.folder), purge_step=1 if purge else None)

    def epoch(self, record: dict[str, Any]) -> None:
        """One epoch's record (as in `history.json`: `epoch`, losses, accuracies, `lr`, images/s)."""
        for key, tag in SCALARS.items():
            if record.get(key) is not None:
                self.writer.add_scalar(tag, float(record[key]), int(record["epoch"]))
        self.writer.flush()

    def hparams(self, config: dict[str, Any], results: dict[str, Any]) -> None:
        """The run's config as hparams and its final metrics, for TensorBoard's HParams view."""
        metrics = {
            f"hparam/{k}": float(results[k])
            for k in ("test_accuracy", "test_loss", "val_accuracy", "val_loss")
            if results.get(k) is not None
        }
        self.writer.add_hparams(flat_hparams(config), metrics, name=HPARAMS)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def flat_hparams(config: dict[str, Any]) -> dict[str, bool | int | float | str]:
    """A config as TensorBoard hparams: numbers, strings and bools as they are, the rest (model_args, shapes,
    None) as JSON text."""
    out: dict[str, bool | int | float | str] = {}
    for key, value in config.items():
        if isinstance(value, bool | int | float | str):
            out[key] = value
        else:
            out[key] = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return out


def _records(path: Path):
    """The serialized events of one file (TFRecord framing: length, its CRC, data, the data's CRC)."""
    data = path.read_bytes()
    i = 0
    while i + 12 <= len(data):
        (length,) = struct.unpack("<Q", data[i : i + 8])
        yield data[i + 12 : i + 12 + length]
        i += 12 + length + 4


def read_events(folder: str | Path) -> dict[str, list[tuple[int, float]]]:
    """The scalars of the event files directly in `folder` (a run's `events/`), tag → [(step, value)], as
    TensorBoard shows them: a restart's purge drops the earlier events of the steps it trains again."""
    from tensorboardX.proto import event_pb2

    scalars: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(Path(folder).glob("events.out.tfevents.*")):
        for raw in _records(path):
            event = event_pb2.Event.FromString(raw)
            if event.HasField("session_log") and event.session_log.status == event.session_log.START:
                scalars = {tag: [p for p in points if p[0] < event.step] for tag, points in scalars.items()}
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars
