"""A trained network out of the project (`python -m cnn export`): its best weights and the forward pass as a
serialized `jax.export` program (StableHLO, the batch dimension symbolic), for CPU and CUDA, beside a JSON
file with its class names and input. Loading it needs JAX alone, not `cnn`:

    import jax, numpy as np
    program = jax.export.deserialize(open("seed_cnn.jaxexport", "rb").read())
    logits = program.call(images)  # uint8 (N, 28, 28, 1), any N

With `--onnx` (the `onnx` extra: jax2onnx), also an ONNX model of the same function, run by onnxruntime:

    import onnxruntime
    session = onnxruntime.InferenceSession("seed_cnn.onnx")
    logits = session.run(None, {session.get_inputs()[0].name: images})[0]
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from cnn.data.spec import to_float
from cnn.engine.state import TrainState, model_variables
from cnn.models.computation import max_as_slices
from cnn.runs.folder import write_json
from cnn.runs.outputs import atomic_path, check_output, write_atomic
from cnn.runs.results import finished_run

PLATFORMS = ("cpu", "cuda")


def _logits(state: TrainState, images: jax.Array) -> jax.Array:
    """The model's logits of uint8 images, the pixels turned into [0, 1] exactly as evaluation does."""
    return state.apply_fn(model_variables(state), to_float(images, exact=True), train=False)


def export_state(state: TrainState, platforms: tuple[str, ...] = PLATFORMS) -> jax.export.Exported:
    """`state`'s forward pass, uint8 images `(batch, H, W, C)` -> float32 logits `(batch, outputs)`, with its
    weights as constants, exported for `platforms` with a symbolic batch size."""
    (batch,) = jax.export.symbolic_shape("batch")
    spec = jax.ShapeDtypeStruct((batch, *state.input_shape), jnp.uint8)
    return jax.export.export(jax.jit(functools.partial(_logits, state)), platforms=platforms)(spec)


def onnx_tools() -> tuple[Any, Any]:
    """The `onnx` module and jax2onnx's `to_onnx`; ValueError naming the extra that installs them."""
    try:
        import onnx
        from jax2onnx import to_onnx
    except ImportError:
        raise ValueError("--onnx needs jax2onnx and onnx: pip install -e '.[onnx]'") from None
    return onnx, to_onnx


def export_onnx(state: TrainState, path: Path, name: str | None = None) -> Path:
    """`state`'s forward pass (uint8 images, a symbolic batch -> logits) as the ONNX model `path`, converted
    by jax2onnx. The shape annotations jax2onnx leaves between layers are dropped (after batch norm, moved
    to NCHW, some still say NHWC and onnxruntime refuses the file); onnxruntime infers them again. Max
    pooling is traced as the maximum of slices (`max_as_slices`), which onnxruntime runs."""
    onnx, to_onnx = onnx_tools()
    (batch,) = jax.export.symbolic_shape("batch")
    spec = jax.ShapeDtypeStruct((batch, *state.input_shape), jnp.uint8)
    quiet = [logging.getLogger(name) for name in ("jax2onnx", "onnx_ir")]  # plugins it cannot load, notes
    levels = [logger.level for logger in quiet]
    for logger in quiet:
        logger.setLevel(logging.ERROR)
    try:
        with max_as_slices():
            model = to_onnx(
                functools.partial(_logits, state), [spec], model_name=name or path.stem, return_mode="proto"
            )
    finally:
        for logger, level in zip(quiet, levels, strict=True):
            logger.setLevel(level)
    del model.graph.value_info[:]
    onnx.save(model, str(path))
    return path


def export_run(
    workdir: str | Path,
    out: str | Path,
    platforms: tuple[str, ...] = PLATFORMS,
    onnx: bool = False,
    force: bool = False,
) -> list[Path]:
    """The finished run in `workdir` (its best epoch) as `out` (the serialized program) and `out` + .json
    (class names, input shape and dtype, output, the run), and with `onnx` `out` with the suffix .onnx; the
    folder of `out` is created. A path among a run's own files is refused, an existing file too unless
    `force`; each file is written whole and renamed into place. Returns the paths written."""
    out = Path(out)
    if onnx and out.suffix == ".onnx":
        raise ValueError(
            f"out: {out} is the ONNX file's name; give the program's, e.g. {out.with_suffix('.jaxexport')}"
        )
    paths = [out, out.with_name(out.name + ".json"), *([out.with_suffix(".onnx")] if onnx else [])]
    for path in paths:  # every path checked before any work
        check_output(path, force)
    if onnx:
        onnx_tools()
    config, spec, state, meta = finished_run(workdir)
    exported = export_state(state, platforms)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, exported.serialize())
    outputs = int(exported.out_avals[0].shape[-1])
    description: dict[str, Any] = {
        "format": "jax.export (StableHLO), load with jax.export.deserialize(bytes).call(images)",
        "run": str(workdir),
        "model": config.model,
        "epoch": meta.get("epoch"),
        "class_names": list(spec.class_names),
        "input": {"shape": ["batch", *spec.image_shape], "dtype": "uint8", "pixels": "0..255"},
        "output": {
            "shape": ["batch", outputs],
            "dtype": "float32",
            "meaning": "logits: softmax for probabilities"
            if outputs > 1
            else "one logit: sigmoid for class 1",
        },
        "platforms": list(exported.platforms),
        "jax_version": jax.__version__,
    }
    write_json(paths[1], description)
    if onnx:
        with atomic_path(paths[2]) as temporary:
            export_onnx(state, temporary, name=paths[2].stem)
    return paths
