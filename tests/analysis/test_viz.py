"""Every picture of `cnn.analysis.viz` on a small trained model, the `viz` command, and their bad-input
errors."""

from __future__ import annotations

import matplotlib.image
import numpy as np
import pytest

from cnn import CLASS_NAMES, TrainConfig, fit
from cnn.analysis import viz
from cnn.cli.main import main
from cnn.engine.evaluation import predict
from cnn.errors import RunNotFoundError
from cnn.runs.results import restore_run


@pytest.fixture(scope="module")
def run(tiny_splits, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("viz-run")
    fit(TrainConfig(epochs=2, batch_size=32), tiny_splits, workdir)
    _, state, _ = restore_run(workdir)
    return workdir, state


def _png_size(path):
    height, width = matplotlib.image.imread(path).shape[:2]
    return width, height


def _expected_size(fig):
    return tuple(int(round(v)) for v in fig.get_size_inches() * 100)


def test_filters_grid(run, tmp_path):
    _, state = run
    fig = viz.plot_filters(state.params, "conv1", path=tmp_path / "f.png")
    panels = [ax for ax in fig.axes if ax.images and ax.get_label() != "<colorbar>"]
    assert len(panels) == 32 and len(fig.axes) == 33  # a 4×8 grid and its colour bar
    limits = {ax.images[0].get_clim() for ax in panels}
    assert len(limits) == 1 and next(iter(limits))[0] == -next(iter(limits))[1]  # one symmetric scale
    assert _png_size(tmp_path / "f.png") == _expected_size(fig) == (1040, 570)
    fig2 = viz.plot_filters(state.params, "conv2", in_channel=5)
    assert sum(bool(ax.images) for ax in fig2.axes) == 64 and "input channel 5" in fig2._suptitle.get_text()


@pytest.mark.parametrize(
    ("layer", "shape"),
    [("conv1", (28, 28, 32)), ("pool1", (14, 14, 32)), ("conv2", (14, 14, 64)), ("pool2", (7, 7, 64))],
)
def test_feature_maps_have_the_layers_real_size(run, tiny_splits, layer, shape, tmp_path):
    _, state = run
    maps = viz.feature_maps(state, tiny_splits.test.images[0], layer)
    assert maps.shape == shape
    assert layer != "conv1" or maps.min() >= 0  # the ReLU is part of the layer's output
    fig = viz.plot_feature_maps(state, tiny_splits.test.images[0], layer, path=tmp_path / "m.png")
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == min(32, shape[2])
    assert all(ax.images[0].get_array().shape == shape[:2] for ax in panels)
    np.testing.assert_allclose(panels[3].images[0].get_array(), maps[:, :, 3])
    assert _png_size(tmp_path / "m.png") == _expected_size(fig)


def test_curves_from_a_workdir(run, tmp_path):
    workdir, _ = run
    fig = viz.plot_history(workdir, path=tmp_path / "c.png")
    assert [ax.get_title() for ax in fig.axes] == ["Loss", "Accuracy"]
    assert any("best epoch" in t.get_text() for t in fig.axes[0].get_legend().get_texts())
    assert _png_size(tmp_path / "c.png") == (1000, 400)


def test_prediction_grid_names_classes_and_marks_mistakes(run, tiny_splits, tmp_path):
    _, state = run
    test = tiny_splits.test
    truth = viz.plot_predictions(test.images, test.labels, n=25, path=tmp_path / "t.png")
    titles = [ax.get_title() for ax in truth.axes if ax.images]
    assert titles == [CLASS_NAMES[y] for y in test.labels[:25]]
    probabilities = predict(state, test.images)
    fig = viz.plot_predictions(test.images, test.labels, probabilities, n=25)
    for i, ax in enumerate(a for a in fig.axes if a.images):
        guess = probabilities[i].argmax()
        assert ax.get_title().startswith(CLASS_NAMES[guess])
        assert (ax.title.get_color() == "red") == (guess != test.labels[i])


def test_confusion_matrix_and_mistakes(run, tiny_splits, tmp_path):
    _, state = run
    labels = tiny_splits.test.labels
    probabilities = predict(state, tiny_splits.test.images)
    counts = viz.confusion_matrix(labels, probabilities.argmax(1))
    assert counts.sum() == len(labels) and np.trace(counts) == (probabilities.argmax(1) == labels).sum()
    fig = viz.plot_confusion(labels, probabilities.argmax(1), path=tmp_path / "cm.png")
    assert len(fig.axes) == 2 and [t.get_text() for t in fig.axes[0].get_xticklabels()] == list(CLASS_NAMES)
    assert fig.axes[1].get_title() == "Confusion matrix (normalised)"


def test_most_confident_mistakes_order():
    labels = np.array([0, 1, 2, 3])
    probabilities = np.array([[0.1, 0.9, 0, 0], [0.2, 0.8, 0, 0], [0.6, 0.0, 0.4, 0], [0, 0.3, 0, 0.7]])
    np.testing.assert_array_equal(viz.most_confident_mistakes(labels, probabilities), [0, 2])


def test_learned_filters_beside_classic_ones(run):
    _, state = run
    fig = viz.plot_learned_vs_classic(state.params, count=8)
    titles = [ax.get_title() for ax in fig.axes if ax.images]
    assert titles[:8] == [f"conv1 filter {i}" for i in range(8)] and "laplacian" in titles


def test_viz_command_writes_every_picture_and_the_explanations(run, idx_dir, tmp_path, capsys):
    workdir, _ = run
    out = tmp_path / "pictures"
    code = main(
        [
            "viz",
            "--workdir",
            str(workdir),
            "--out",
            str(out),
            "--source-dir",
            str(idx_dir),
            "--data-dir",
            str(tmp_path / "tfds"),
            "--cam",
            "conv2",
        ]
    )
    assert code == 0, capsys.readouterr().err
    names = {p.name for p in out.iterdir()}
    assert (out / "cam_conv2.png").stat().st_size > 0  # with --cam: the explanations too
    assert {
        "filters.png",
        "curves.png",
        "predictions.png",
        "confusion.png",
        "mistakes.png",
        "feature_maps_conv1.png",
        "feature_maps_pool2.png",
        "learned_vs_classic.png",
    } <= names


def test_bad_inputs(run, tiny_splits, tmp_path, capsys):
    _, state = run
    with pytest.raises(
        ValueError, match=r"layer: 'conv9' has no feature maps; layers with feature maps: \['conv1'"
    ):
        viz.feature_maps(state, tiny_splits.test.images[0], "conv9")
    with pytest.raises(ValueError, match=r"no convolution called 'dense1'.*\['conv1', 'conv2'\]"):
        viz.plot_filters(state.params, "dense1")
    with pytest.raises(ValueError, match=r"image: expected one image .* got \(32, 32, 3\)"):
        viz.feature_maps(state, np.zeros((32, 32, 3)), "conv1")
    with pytest.raises(RunNotFoundError, match="holds no run"):
        restore_run(tmp_path / "empty")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text('{"config": {}}')
    with pytest.raises(RunNotFoundError, match="has no checkpoint yet"):
        restore_run(tmp_path / "half")
    assert main(["viz", "--workdir", str(tmp_path / "empty")]) == 2
    assert "python -m cnn train --workdir" in capsys.readouterr().err


def test_no_mistakes_gives_an_empty_figure_not_an_error():
    labels = np.array([1, 2])
    probabilities = np.eye(10)[labels]
    fig = viz.plot_mistakes(np.zeros((2, 28, 28, 1)), labels, probabilities)
    assert "nothing to show" in fig.axes[0].texts[0].get_text()
