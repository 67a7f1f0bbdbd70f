"""Keras' ImageNet weight files read into Flax variables with h5py alone (no Keras, no TensorFlow): the
Keras-2 HDF5 layout of the published files (`layer_names` / `weight_names` attributes, `conv2d_1/kernel:0`),
Keras 3's `.weights.h5` (`layers/NAME/vars/0`) and `.keras` (a zip holding `model.weights.h5`). Converted
weights are cached as an orbax checkpoint, so a second load is fast."""

from __future__ import annotations

import hashlib
import io
import os
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from cnn.errors import WeightsError
from cnn.models.applications.names import Names
from cnn.models.summary import nonfinite

BASE_URL = "https://storage.googleapis.com/tensorflow/keras-applications/"


def keras_models_dirs() -> list[Path]:
    """Where Keras caches what it downloads: `$KERAS_HOME/models/`, then `~/.keras/models/`."""
    dirs = [Path(os.environ["KERAS_HOME"]) / "models"] if os.environ.get("KERAS_HOME") else []
    return dirs + [Path.home() / ".keras" / "models"]


def find_file(file_name: str, url: str) -> Path:
    """The published file `file_name` in Keras' cache folders; else one error naming where it was looked
    for and the URL Keras downloads it from."""
    for folder in keras_models_dirs():
        if (folder / file_name).is_file():
            return folder / file_name
    looked = ", ".join(str(d) for d in keras_models_dirs())
    raise WeightsError(
        f"weights: {file_name} not found (looked in {looked}). Download it from {url} into one of those "
        "folders (or pass its path as weights=PATH); nothing is downloaded at run time."
    )


# ------------------------------------------------------------------------------------------ reading
def _layer_weights_legacy(f: Any) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
    group = f.get("model_weights", f)
    for raw in group.attrs["layer_names"]:
        layer = raw.decode() if isinstance(raw, bytes) else str(raw)
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in group[layer].attrs["weight_names"]]
        if names:
            weights = {n.split("/")[-1].split(":")[0]: np.asarray(group[layer][n]) for n in names}
            yield layer, weights


def _layer_weights_v3(f: Any) -> Iterator[tuple[str, list[np.ndarray]]]:
    for layer, group in f["layers"].items():
        if "vars" in group and len(group["vars"]):
            yield layer, [np.asarray(group["vars"][str(i)]) for i in range(len(group["vars"]))]


def read_weights(path: str | os.PathLike) -> tuple[str, dict[str, Any]]:
    """The file's layout ('keras2' or 'keras3') and its layers' weights, by layer name: a dict of named
    arrays (Keras 2: `kernel`, `bias`, `gamma`, `beta`, `moving_mean`, ...) or a list in Keras' order."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights: {path} does not exist")
    try:
        if path.suffix == ".keras":
            with zipfile.ZipFile(path) as z:
                source: Any = io.BytesIO(z.read("model.weights.h5"))
        else:
            source = path
        with h5py.File(source, "r") as f:
            group = f.get("model_weights", f)
            if "layer_names" in group.attrs:
                return "keras2", dict(_layer_weights_legacy(f))
            if "layers" in f:
                return "keras3", dict(_layer_weights_v3(f))
    except (OSError, KeyError, zipfile.BadZipFile) as e:
        raise WeightsError(f"weights: {path} is not a readable Keras weight file ({e})") from None
    raise WeightsError(
        f"weights: {path} has neither the Keras 2 (layer_names) nor the Keras 3 (layers/) layout"
    )


# ------------------------------------------------------------------------------------------ matching
def _kind(name: str) -> tuple[str, int]:
    """A layer name as (kind, index): `conv2d_5` -> ('conv2d', 5), `mixed7` -> ('mixed7', 0). Keras numbers
    automatic names in the order layers are made, from 0 (Keras 3) or 1 (the published Keras 2 files)."""
    match = re.fullmatch(r"(.*?)_(\d+)", name)
    return (match.group(1), int(match.group(2))) if match else (name, 0)


def pair_layers(ours: list[str], theirs: list[str]) -> dict[str, str]:
    """Our weighted layers paired with the file's: by kind, in the order of their numbers (so `conv2d_93`
    of one session pairs with `conv2d_94` of a file numbered from 1). Raises WeightsError naming the
    layers that have no partner."""
    groups: dict[str, list[list[str]]] = {}
    for side, names in enumerate((ours, theirs)):
        for name in sorted(names, key=_kind):
            groups.setdefault(_kind(name)[0], [[], []])[side].append(name)
    pairs, unmatched = {}, []
    for kind, (a, b) in groups.items():
        if len(a) != len(b):
            ours, theirs = ", ".join(a[:3]) or "none", ", ".join(b[:3]) or "none"
            unmatched.append(f"{kind}: the network has {len(a)} ({ours}…), the file {len(b)} ({theirs}…)")
            continue
        pairs.update(zip(a, b, strict=True))
    if unmatched:
        raise WeightsError("weights: the file's layers do not match the network's: " + "; ".join(unmatched))
    return pairs


KERAS_ORDER = {
    "conv": ("kernel", "bias"),
    "depthwise": ("depthwise_kernel", "bias"),
    "dense": ("kernel", "bias"),
    "bn": ("gamma", "beta", "moving_mean", "moving_variance"),
}


def _layer_kind(params: dict[str, Any], stats: dict[str, Any] | None) -> str:
    if stats is not None:
        return "bn"
    if "depthwise" in params:
        return "depthwise"
    return "conv" if np.ndim(params["kernel"]) == 4 else "dense"


def _as_named(
    kind: str, weights: Any, params: dict[str, Any], stats: dict[str, Any] | None
) -> dict[str, np.ndarray]:
    """A layer's weights by Keras name: Keras 3 lists them in Keras' order, without the ones a layer lacks
    (a batch norm without scale has no gamma)."""
    if isinstance(weights, dict):
        return weights
    present = {
        "conv": ("kernel",) + (("bias",) if "bias" in params else ()),
        "dense": ("kernel",) + (("bias",) if "bias" in params else ()),
        "depthwise": ("depthwise_kernel",) + (("bias",) if "bias" in params.get("depthwise", {}) else ()),
        "bn": (("gamma",) if "scale" in params else ())
        + (("beta",) if "bias" in params else ())
        + ("moving_mean", "moving_variance"),
    }[kind]
    if len(weights) != len(present):
        raise WeightsError(
            f"holds {len(weights)} arrays, the layer needs {len(present)} ({', '.join(present)})"
        )
    return dict(zip(present, weights, strict=True))


def _convert(
    kind: str, w: dict[str, np.ndarray], params: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Keras arrays as the Flax layer's parameters (and batch statistics)."""
    if kind == "bn":
        p = {"scale": w.get("gamma"), "bias": w.get("beta")}
        return {k: v for k, v in p.items() if k in params}, {
            "mean": w["moving_mean"],
            "var": w["moving_variance"],
        }
    if kind == "depthwise":
        kernel = w["depthwise_kernel"] if "depthwise_kernel" in w else w["kernel"]  # Keras 2 / Keras 3 names
        inner = {"kernel": np.transpose(kernel, (0, 1, 3, 2))}
        if "bias" in params["depthwise"]:
            inner["bias"] = w["bias"]
        return {"depthwise": inner}, None
    return {k: w[k] for k in ("kernel", "bias") if k in params}, None


def _check_shapes(ours: Any, theirs: Any, layer: str, source: str) -> None:
    import jax

    for (path, a), (_, b) in zip(
        jax.tree_util.tree_leaves_with_path(ours), jax.tree_util.tree_leaves_with_path(theirs), strict=True
    ):
        if np.shape(a) != np.shape(b):
            where = "/".join(str(getattr(k, "key", k)) for k in path)
            raise WeightsError(
                f"weights: layer {layer} ({source} in the file), {where}: the file has shape {np.shape(b)}, "
                f"the network needs {np.shape(a)}"
            )


def match_weights(
    variables: dict[str, Any], layers: list[tuple[str, str]], path: str | os.PathLike
) -> dict[str, Any]:
    """`variables` (the network's, for its shapes) with every weighted layer's arrays taken from the file;
    `layers` are the network's (name, Keras class) in the order of Keras' `model.layers`. A Keras 2 file
    names its layers: paired by name (see `pair_layers`). A Keras 3 file keys them by class in that order
    (`conv2d`, `conv2d_1`, ...). Every mismatch is one WeightsError naming the layer and both shapes."""
    layout, weights = read_weights(path)
    params, stats = variables["params"], variables.get("batch_stats", {})
    weighted = [(name, kind) for name, kind in layers if name in params or name in stats]
    ours = [name for name, _ in weighted]
    if layout == "keras2":
        pairs = pair_layers(ours, list(weights))
    else:
        by_class = Names()
        keyed = {by_class(kind): name for name, kind in weighted}
        pairs = {keyed[k]: v for k, v in pair_layers(list(keyed), list(weights)).items()}
    new_params, new_stats = dict(params), dict(stats)
    for name in ours:
        layer_params, layer_stats = params.get(name, {}), stats.get(name)
        kind = _layer_kind(layer_params, layer_stats)
        try:
            named = _as_named(kind, weights[pairs[name]], layer_params, layer_stats)
            p, s = _convert(kind, named, layer_params)
        except (KeyError, WeightsError) as e:
            raise WeightsError(f"weights: layer {name} ({pairs[name]} in {path}): {e}") from None
        damaged = nonfinite({"params": p, "stats": s})
        if damaged:
            raise WeightsError(
                f"weights: layer {name} ({pairs[name]} in {path}) holds NaN or Inf values "
                f"({', '.join(damaged[:3])}): the file is damaged; download it again"
            )
        _check_shapes(layer_params, p, name, pairs[name])
        new_params[name] = p
        if s is not None:
            _check_shapes(layer_stats, s, name, pairs[name])
            new_stats[name] = s
    return {"params": new_params, **({"batch_stats": new_stats} if stats else {})}


# ------------------------------------------------------------------------------------------ cache
def cache_dir(path: Path) -> Path:
    """Where the converted weights of `path` are cached: beside Keras' cache, keyed by the file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return keras_models_dirs()[-1] / "cnn-orbax" / f"{path.stem}-{digest.hexdigest()[:16]}"


def cached(path: Path, key: str, convert) -> dict[str, Any]:
    """The converted variables of `path` for `key` (the network and its input), from the orbax cache or
    from `convert()`, which is then cached."""
    import orbax.checkpoint as ocp

    target = (cache_dir(path) / key).absolute()
    if (target / "_CHECKPOINT_METADATA").is_file():
        try:
            return ocp.StandardCheckpointer().restore(target)
        except Exception as e:  # a damaged cache entry: convert again
            print(f"Warning: ignoring the damaged weight cache {target} ({type(e).__name__})")
    variables = convert()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save(target, variables, force=True)
        checkpointer.wait_until_finished()
    except OSError as e:  # a read-only home: the weights still load, only uncached
        print(f"Warning: could not cache the converted weights in {target} ({e})")
    return variables
