"""Using a trained run: `predict` on image files, `evaluate` (checked against scikit-learn), explanations
(Grad-CAM, input gradients, SmoothGrad) on constructed cases whose answer is known, and `export` (a fresh
process without `cnn` gives the same logits)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from cnn.analysis.explain import grad_cam, input_gradients, smoothgrad, spatial_layers
from cnn.analysis.scores import calibration, classification_report
from cnn.cli.main import main
from cnn.data.load import load_dataset
from cnn.data.spec import FASHION_MNIST, to_float
from cnn.engine.evaluation import predict
from cnn.inference.predict import read_images
from cnn.runs.results import finished_run
from tests.cli.test_misuse import one_line_error
from tests.processes import subprocess_env

sklearn_metrics = pytest.importorskip("sklearn.metrics")


@pytest.fixture(scope="module")
def run(idx_dir, prepared, tmp_path_factory) -> Path:
    """A finished seed CNN run on the tiny Fashion-MNIST-format data (10 classes)."""
    workdir = tmp_path_factory.mktemp("use") / "run"
    args = ["train", "--source-dir", str(idx_dir), "--data-dir", str(prepared), "--workdir", str(workdir)]
    assert main([*args, "--epochs", "2", "--batch-size", "32"]) == 0
    return workdir


def _data_args(idx_dir: Path, prepared: Path) -> list[str]:
    return ["--source-dir", str(idx_dir), "--data-dir", str(prepared)]


# ------------------------------------------------------------------------------------------------ predict
def test_predict_reads_files_as_the_data_set_and_ranks_the_classes(run, idx_dir, prepared, tmp_path, capsys):
    config, spec, state, _ = finished_run(run)
    test = load_dataset(config, data_dir=prepared, source_dir=idx_dir).test
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    for i in range(3):
        Image.fromarray(test.images[i, ..., 0]).save(folder / f"{i}.png")
    sixteen = (test.images[3, ..., 0].astype(np.uint16) * 257).astype(np.uint16)
    Image.fromarray(sixteen).save(folder / "sub" / "3-16bit.png")  # scaled, as the data sets do
    Image.fromarray(np.repeat(test.images[4], 3, -1)).resize((56, 56)).save(folder / "sub" / "4-big.jpg")
    (folder / "broken.png").write_bytes(b"not an image")
    capsys.readouterr()

    assert main(["predict", "--workdir", str(run), str(folder), "--json", "--top", "3"]) == 0
    out, err = capsys.readouterr()
    result = json.loads(out)
    assert "Skipping" in err and "broken.png" in err
    assert [Path(s["file"]).name for s in result["skipped"]] == ["broken.png"]
    names = [Path(p["file"]).name for p in result["predictions"]]
    assert names == ["0.png", "1.png", "2.png", "3-16bit.png", "4-big.jpg"]
    images, _, _ = read_images([folder / "sub" / "4-big.jpg"], spec)
    assert images.shape == (1, 28, 28, 1)
    expected = predict(state, np.concatenate([test.images[:4], images]))
    for row, p in zip(result["predictions"], expected, strict=True):
        assert [t["index"] for t in row["top"]] == list(np.argsort(-p, kind="stable")[:3])
        assert [t["class"] for t in row["top"]] == [spec.class_names[t["index"]] for t in row["top"]]
        np.testing.assert_allclose([t["probability"] for t in row["top"]], np.sort(p)[::-1][:3], rtol=1e-6)

    assert main(["predict", "--workdir", str(run), str(folder / "0.png"), "--csv", "--top", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "file,class_1,probability_1,class_2,probability_2" and len(lines) == 2
    assert main(["predict", "--workdir", str(run), str(folder / "0.png")]) == 0
    assert "top 3" in capsys.readouterr().out


def test_predict_refuses_bad_input_in_one_line(run, tmp_path, capsys):
    (tmp_path / "bad.png").write_bytes(b"x")
    cases = [
        ([str(tmp_path / "missing.png")], "missing.png does not exist"),
        ([str(tmp_path / "bad.png")], "none of the 1 file(s) is a readable image"),
        ([str(tmp_path)], None),  # a folder whose one image file is unreadable
    ]
    for inputs, message in cases:
        assert main(["predict", "--workdir", str(run), *inputs]) == 2
        err = one_line_error(capsys)
        assert message is None or message in err
    assert main(["predict", "--workdir", str(tmp_path / "norun"), str(tmp_path / "bad.png")]) == 2
    assert "holds no run" in one_line_error(capsys)
    assert main(["predict", "--workdir", str(run), str(tmp_path / "bad.png"), "--top", "0"]) == 2
    assert "top: expected an integer >= 1" in one_line_error(capsys)


def test_an_unfinished_or_edited_run_is_refused_naming_the_problem(run, tmp_path, capsys):
    import shutil

    unfinished = tmp_path / "unfinished"
    shutil.copytree(run, unfinished)
    (unfinished / "results.json").unlink()
    for command in (["predict", str(tmp_path)], ["evaluate"], ["export", "--out", str(tmp_path / "m")]):
        assert main([command[0], "--workdir", str(unfinished), *command[1:]]) == 2
        assert "has not finished (no results.json)" in one_line_error(capsys)
    edited = tmp_path / "edited"
    shutil.copytree(run, edited)
    saved = json.loads((edited / "config.json").read_text())
    saved["config"]["model"] = "lenet5"
    (edited / "config.json").write_text(json.dumps(saved))
    assert main(["export", "--workdir", str(edited), "--out", str(tmp_path / "m")]) == 2
    assert "does not fit the weights" in one_line_error(capsys)


# ----------------------------------------------------------------------------------------------- evaluate
def test_the_report_agrees_with_scikit_learn():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 300)
    logits = rng.normal(size=(300, 5)) + 2.0 * np.eye(5)[labels] * rng.random((300, 1))
    logits[:, 4] -= 10  # class 4 never predicted: precision 0, as zero_division=0 has it
    probabilities = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    report = classification_report(labels, probabilities, list("abcde"), top_k=(1, 2))
    guesses = probabilities.argmax(1)
    p, r, f, s = sklearn_metrics.precision_recall_fscore_support(labels, guesses, zero_division=0)
    for name, ours in zip(("precision", "recall", "f1"), (p, r, f), strict=True):
        np.testing.assert_allclose([c[name] for c in report["per_class"]], ours, rtol=1e-12)
        for average in ("macro", "weighted"):
            theirs = sklearn_metrics.precision_recall_fscore_support(
                labels, guesses, average=average, zero_division=0
            )
            assert report[average][name] == pytest.approx(theirs[("precision", "recall", "f1").index(name)])
    assert [c["support"] for c in report["per_class"]] == list(s)
    assert report["confusion"] == sklearn_metrics.confusion_matrix(labels, guesses, labels=range(5)).tolist()
    assert report["accuracy"] == pytest.approx(sklearn_metrics.accuracy_score(labels, guesses))
    assert report["top_k_accuracy"]["2"] == pytest.approx(
        sklearn_metrics.top_k_accuracy_score(labels, probabilities, k=2, labels=range(5))
    )
    assert report["log_loss"] == pytest.approx(
        sklearn_metrics.log_loss(labels, probabilities, labels=range(5))
    )
    # the expected calibration error, counted example by example
    confidence, correct = probabilities.max(1), guesses == labels
    ece = 0.0
    for low in np.arange(15) / 15:
        inside = [i for i in range(300) if low < confidence[i] <= low + 1 / 15 + 1e-12]
        if inside:
            ece += len(inside) / 300 * abs(confidence[inside].mean() - correct[inside].mean())
    assert report["ece"] == pytest.approx(ece, abs=1e-12)
    perfect, _ = calibration(np.array([0, 1]), np.array([[1.0, 0.0], [0.0, 1.0]]))
    assert perfect == 0.0


def test_evaluate_writes_the_report_and_flip_averages(run, idx_dir, prepared, tmp_path, capsys):
    config, spec, state, _ = finished_run(run)
    test = load_dataset(config, data_dir=prepared, source_dir=idx_dir).test
    args = ["evaluate", "--workdir", str(run), *_data_args(idx_dir, prepared)]
    assert main(args) == 0
    assert "macro F1" in capsys.readouterr().out
    report = json.loads((run / "eval" / "test.json").read_text())
    guesses = predict(state, test.images).argmax(1)
    assert report["examples"] == len(test) and report["split"] == "test"
    assert report["accuracy"] == pytest.approx(sklearn_metrics.accuracy_score(test.labels, guesses))
    results = json.loads((run / "results.json").read_text())
    assert report["accuracy"] == pytest.approx(results["test_accuracy"])  # the same weights and data
    for name in ("test.md", "test_reliability.png", "test_confusion.png", "test_mistakes.png"):
        assert (run / "eval" / name).stat().st_size > 0
    assert "| **macro** |" in (run / "eval" / "test.md").read_text()

    out = tmp_path / "new" / "folder"
    assert main([*args, "--flip", "--split", "val", "--out", str(out)]) == 0
    flipped = json.loads((out / "val_flip.json").read_text())
    val = load_dataset(config, data_dir=prepared, source_dir=idx_dir).val
    mean = (predict(state, val.images) + predict(state, val.images[:, :, ::-1])) / 2
    assert flipped["accuracy"] == pytest.approx(float((mean.argmax(1) == val.labels).mean()))
    assert flipped["flip_averaged"] and flipped["split"] == "val"


def test_evaluate_on_data_with_other_classes_is_refused(run, tmp_path, capsys):
    for name in ("a", "b"):
        (tmp_path / "other" / name).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(np.full((28, 28), 40 * i, np.uint8)).save(tmp_path / "other" / name / f"{i}.png")
    args = ["evaluate", "--workdir", str(run), "--dataset", str(tmp_path / "other")]
    assert main([*args, "--data-dir", str(tmp_path / "tfds")]) == 2
    assert "has the classes ['a', 'b'], the run in" in one_line_error(capsys)


# ------------------------------------------------------------------------------------------------ explain
class Detect(nn.Module):
    """Feature maps: a 3×3 convolution of two filters and its relu."""

    @nn.compact
    def __call__(self, x):
        return nn.relu(nn.Conv(2, (3, 3), padding="SAME", name="conv")(x))


class PatternNet(nn.Module):
    """Two 3×3 detectors (a cross, a filled square), global average pooling and a linear head; with the
    weights of `pattern_weights`, class 1 is decided by the cross alone and class 0 by the square."""

    @nn.compact
    def __call__(self, x):
        return nn.Dense(2, name="head")(Detect(name="detect")(x).mean(axis=(1, 2)))


CROSS = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], np.float32)


def pattern_weights() -> dict:
    square = np.ones((3, 3), np.float32)
    kernel = np.stack([CROSS - 2 * (1 - CROSS), square], -1)[:, :, None, :]  # corners count against a cross
    return {
        "params": {
            "detect": {"conv": {"kernel": jnp.asarray(kernel), "bias": jnp.asarray([-4.5, -8.5])}},
            "head": {"kernel": jnp.asarray([[0.0, 1.0], [1.0, 0.0]]), "bias": jnp.zeros(2)},
        }
    }


def pattern_image() -> np.ndarray:
    """A cross centred at (4, 4) and a square centred at (11, 11) on a 16×16 black image."""
    image = np.zeros((16, 16, 1), np.float32)
    image[3:6, 3:6, 0] = CROSS
    image[10:13, 10:13, 0] = 1.0
    return image


def test_grad_cam_lights_up_the_region_that_decides_the_class():
    network = (PatternNet(), pattern_weights())
    image = pattern_image()[None]
    cross, square = (slice(3, 6), slice(3, 6)), (slice(10, 13), slice(10, 13))
    for target, inside, outside in ((1, cross, square), (0, square, cross)):
        cam = grad_cam(network, image, "detect", classes=target, upsample=False)[0]
        assert cam[inside].max() == 1.0 and cam[outside].max() == 0.0
        assert cam[inside].sum() / cam.sum() > 0.9


def test_grad_cam_of_the_last_maps_before_average_pooling_is_cam():
    """For maps → global average pooling → dense, Grad-CAM equals Zhou et al.'s CAM (the maps weighted by
    the class's dense weights) up to scale: an identity that holds for any weights."""
    module = PatternNet()
    variables = module.init(jax.random.PRNGKey(3), jnp.zeros((1, 16, 16, 1)))
    images = np.random.default_rng(0).random((3, 16, 16, 1)).astype(np.float32)
    cams = grad_cam((module, variables), images, "detect", classes=[0, 1, 1], upsample=False)
    _, captured = module.apply(variables, images, capture_intermediates=True, mutable=["intermediates"])
    maps = np.asarray(captured["intermediates"]["detect"]["__call__"][0])
    weights = np.asarray(variables["params"]["head"]["kernel"])
    for i, c in enumerate([0, 1, 1]):
        cam = np.maximum(maps[i] @ weights[:, c], 0)
        np.testing.assert_allclose(cams[i], cam / cam.max() if cam.max() > 0 else cam, atol=1e-5)


def test_input_gradients_of_a_linear_network_are_its_weights_and_smoothgrad_keeps_them():
    module = nn.Dense(3)
    flat = nn.Sequential([lambda x: x.reshape(len(x), -1), module])
    variables = flat.init(jax.random.PRNGKey(0), jnp.zeros((1, 4, 5, 2)))
    images = np.random.default_rng(1).random((2, 4, 5, 2)).astype(np.float32)
    kernel = np.asarray(jax.tree.leaves(variables["params"])[1]).reshape(4, 5, 2, 3)
    grads = input_gradients((flat, variables), images, classes=[2, 0])
    np.testing.assert_allclose(grads, np.stack([kernel[..., 2], kernel[..., 0]]), rtol=1e-5, atol=1e-7)
    smooth = input_gradients((flat, variables), images, classes=[2, 0], samples=8, noise=0.3)
    np.testing.assert_allclose(smooth, grads, rtol=1e-5, atol=1e-6)  # noise moves no linear gradient
    maps = smoothgrad((flat, variables), images, classes=[2, 0], samples=4)
    assert maps.shape == (2, 4, 5) and maps.max() == pytest.approx(1.0)


def test_explanations_of_a_run_and_of_an_application_network(run, capsys):
    _, _, state, _ = finished_run(run)
    assert list(spatial_layers(state, (28, 28, 1))) == ["conv1", "pool1", "conv2", "pool2"]
    images = (np.random.default_rng(0).random((3, 28, 28, 1)) * 255).astype(np.uint8)
    cams = grad_cam(state, images, "conv2")
    assert cams.shape == (3, 28, 28) and cams.min() >= 0 and cams.max() <= 1
    np.testing.assert_allclose(grad_cam(state, images.astype(np.float32) / 255, "conv2"), cams, atol=1e-5)
    with pytest.raises(ValueError, match=r"'dense1' is no layer with feature maps; .* \['conv1', 'pool1'"):
        grad_cam(state, images, "dense1")
    from cnn.models.applications.networks import build

    network = build("vgg16", input_shape=(32, 32, 3), cut="block2_pool")
    assert "base/block2_conv2" in spatial_layers(network, (32, 32, 3))
    colour = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
    cams = grad_cam(network, colour, "block2_conv2", classes=5)  # a cut network: channel 5's mean
    assert cams.shape == (2, 32, 32) and cams.max() == pytest.approx(1.0)
    whole = build("mobilenet_v2", input_shape=(32, 32, 3), include_top=True, classes=4)
    cams = grad_cam(whole, colour, "Conv_1")  # the whole network: its predicted class
    assert cams.shape == (2, 32, 32) and np.isfinite(cams).all()


def test_viz_cam_refuses_a_wrong_layer_before_drawing(run, idx_dir, prepared, tmp_path, capsys):
    # What --cam draws is checked with every other picture (tests/analysis/test_viz.py).
    out = tmp_path / "viz"
    args = ["viz", "--workdir", str(run), "--out", str(out), *_data_args(idx_dir, prepared)]
    assert main([*args, "--cam", "nope"]) == 2
    assert "'nope' is no layer with feature maps" in one_line_error(capsys) and not out.exists()


# ------------------------------------------------------------------------------------------------- export
LOADER = """
import sys, numpy as np, jax
program = jax.export.deserialize(open(sys.argv[1], "rb").read())
images = np.load(sys.argv[2])
logits = [np.asarray(program.call(images[:n])) for n in (1, 3, len(images))]
np.save(sys.argv[3], logits[-1])
assert all(np.allclose(a, logits[-1][: len(a)], rtol=1e-5, atol=1e-5) for a in logits)
assert not [m for m in sys.modules if m == "cnn" or m.startswith("cnn.")], "cnn was imported"
"""


@pytest.mark.slow
def test_an_exported_run_gives_the_same_logits_in_a_process_without_cnn(run, tmp_path, capsys):
    out = tmp_path / "new" / "seed.jaxexport"
    assert main(["export", "--workdir", str(run), "--out", str(out)]) == 0
    description = json.loads(out.with_name("seed.jaxexport.json").read_text())
    assert description["class_names"] == list(FASHION_MNIST.class_names)
    assert description["input"] == {"shape": ["batch", 28, 28, 1], "dtype": "uint8", "pixels": "0..255"}
    assert "cpu" in description["platforms"] and "cuda" in description["platforms"]
    _, _, state, _ = finished_run(run)
    images = (np.random.default_rng(0).random((7, 28, 28, 1)) * 255).astype(np.uint8)
    np.save(tmp_path / "images.npy", images)
    loaded = subprocess.run(
        [sys.executable, "-c", LOADER, str(out), str(tmp_path / "images.npy"), str(tmp_path / "logits.npy")],
        capture_output=True, text=True, env=subprocess_env(), cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert loaded.returncode == 0, loaded.stderr
    theirs = np.load(tmp_path / "logits.npy")

    def forward(images):  # cnn's compiled forward pass, its weights constants as in the exported program
        return state.apply_fn({"params": state.params}, to_float(images, exact=True), train=False)

    np.testing.assert_allclose(theirs, np.asarray(jax.jit(forward)(images)), atol=1e-6, rtol=0)
    assert main(["export", "--workdir", str(run), "--out", str(tmp_path)]) == 2
    assert "is a folder; give a file name" in one_line_error(capsys)
    assert main(["export", "--workdir", str(run), "--out", str(tmp_path / "m.onnx"), "--onnx"]) == 2
    assert "is the ONNX file's name" in one_line_error(capsys)


@pytest.mark.parametrize("model", ["seed_cnn", "lenet5", "vgg_bn"])  # max and average pooling, batch norm
def test_onnx_export_gives_the_same_logits_in_onnxruntime(model, tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    from cnn.config import TrainConfig
    from cnn.engine.state import initial_state, model_variables
    from cnn.inference.export import export_onnx

    state = initial_state(TrainConfig(model=model), FASHION_MNIST)
    path = export_onnx(state, tmp_path / f"{model}.onnx")
    session = onnxruntime.InferenceSession(str(path))
    images = (np.random.default_rng(0).random((5, 28, 28, 1)) * 255).astype(np.uint8)
    ours = np.asarray(state.apply_fn(model_variables(state), images.astype(np.float32) / 255, train=False))
    for n in (1, 5):
        theirs = session.run(None, {session.get_inputs()[0].name: images[:n]})[0]
        np.testing.assert_allclose(theirs, ours[:n], atol=1e-5, rtol=1e-5)


def test_onnx_export_without_jax2onnx_names_the_extra(run, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "jax2onnx", None)  # as if it were not installed
    assert main(["export", "--workdir", str(run), "--out", str(tmp_path / "m.jaxexport"), "--onnx"]) == 2
    assert "--onnx needs jax2onnx and onnx: pip install -e '.[onnx]'" in one_line_error(capsys)
