"""Data sets beyond Fashion-MNIST: image folders written by the tests, the real LFW photos, transforms,
any input shape and number of classes, the one-sigmoid binary head."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import optax
import pytest
from PIL import Image

from cnn import TrainConfig, fit, load_dataset, restore_run
from cnn.cli.main import main
from cnn.data import image_folder
from cnn.data.fashion_mnist import load_fashion_mnist
from cnn.data.spec import DataSpec, Split, Splits
from cnn.data.splits import split_indices, stratified_split
from cnn.data.transforms import resize, to_channels
from cnn.engine.evaluation import predict
from cnn.engine.state import model_for
from cnn.engine.steps import losses_and_correct
from cnn.errors import DataError

COLOURS = {"cat": (200, 40, 40), "dog": (40, 200, 40), "emu": (40, 40, 200)}


def _write_folder(
    root: Path, per_class: int = 10, classes=COLOURS, size=(20, 24), mode="RGB", fmt="png"
) -> Path:
    """Class folders of small images: each class a colour plus noise (learnable), mixed PNG/JPEG/BMP/GIF."""
    rng = np.random.default_rng(0)
    formats = [fmt] if fmt else ["png", "jpg", "bmp", "gif"]
    for name, colour in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.clip(np.array(colour) + rng.integers(-30, 30, (*size, 3)), 0, 255).astype(np.uint8)
            image = Image.fromarray(pixels).convert(mode)
            image.save(root / name / f"{i:03d}.{formats[i % len(formats)]}")
    return root


def _config(root: Path, **fields) -> TrainConfig:
    return TrainConfig(dataset=str(root), **fields)


def test_folder_classes_counts_splits_shapes(tmp_path):
    root = _write_folder(tmp_path / "photos", fmt=None)
    config = _config(root, image_size=(16, 16), val_fraction=0.2, test_fraction=0.2)
    splits = load_dataset(config, data_dir=tmp_path / "tfds")
    assert splits.class_names == ("cat", "dog", "emu")
    assert (len(splits.train), len(splits.val), len(splits.test)) == (18, 6, 6)
    for part in (splits.train, splits.val, splits.test):
        assert part.images.dtype == np.uint8 and part.images.shape[1:] == (16, 16, 3)
        assert sorted(np.bincount(part.labels)) == [np.bincount(part.labels)[0]] * 3  # stratified
    again = load_dataset(config, data_dir=tmp_path / "tfds")  # reused, same split
    np.testing.assert_array_equal(again.test.images, splits.test.images)
    other_seed = load_dataset(_config(root, image_size=(16, 16), split_seed=1), data_dir=tmp_path / "tfds")
    assert not np.array_equal(other_seed.test.images, splits.test.images)
    assert splits.spec.image_shape == (16, 16, 3) and splits.spec.source == str(root.resolve())
    assert splits.spec.sizes == {"train": 18, "val": 6, "test": 6} and len(splits.spec.fingerprint) == 16
    # the colour of a class survives decoding and resizing (a class is its colour)
    cat = splits.train.images[splits.train.labels == 0].reshape(-1, 3).mean(0)
    assert cat[0] > 150 > 80 > cat[1]


def test_split_folders_are_used_as_given(tmp_path):
    for split, n in (("train", 6), ("val", 2), ("test", 3)):
        _write_folder(tmp_path / "set" / split, per_class=n, size=(8, 8))
    splits = load_dataset(_config(tmp_path / "set", channels=1), data_dir=tmp_path / "tfds")
    assert (len(splits.train), len(splits.val), len(splits.test)) == (18, 6, 9)
    assert splits.train.images.shape[1:] == (8, 8, 1)


def test_grayscale_to_colour_and_back():
    gray = np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4, 1)
    colour = to_channels(gray, 3)
    assert colour.shape == (2, 4, 4, 3) and (colour == gray).all()
    np.testing.assert_array_equal(to_channels(colour, 1), gray)  # equal R, G, B: luma is the value
    rgb = np.array([[[[255, 0, 0]]]], np.uint8)
    assert to_channels(rgb, 1)[0, 0, 0, 0] == np.asarray(Image.fromarray(rgb[0]).convert("L"))[0, 0]
    assert resize(np.full((1, 28, 28, 1), 7, np.uint8), (75, 75)).shape == (1, 75, 75, 1)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda r: r.mkdir(), "holds no class folders"),
        (lambda r: _write_folder(r, classes={"cat": COLOURS["cat"]}), "single class"),
        (lambda r: (_write_folder(r), (r / "zebra").mkdir()), "zebra holds no images"),
        (
            lambda r: (_write_folder(r), (r / "dog" / "005.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")),
            "dog/005.png is not a readable image",
        ),
        (
            lambda r: (_write_folder(r), _truncate(r / "cat" / "001.png")),
            "cat/001.png is not a readable image",
        ),
        (
            lambda r: (_write_folder(r), _write_folder(r, classes={"emu": COLOURS["emu"]}, mode="L")),
            "mixes grayscale",
        ),
        (
            lambda r: (_write_folder(r), _write_folder(r, classes={"emu": COLOURS["emu"]}, size=(9, 9))),
            "--image-size",
        ),
    ],
    ids=[
        "empty",
        "one-class",
        "class-without-images",
        "not-an-image",
        "truncated",
        "mixed-modes",
        "mixed-sizes",
    ],
)
def test_bad_folders_fail_naming_the_problem_before_writing(tmp_path, make, message):
    root = tmp_path / "photos"
    make(root)
    with pytest.raises(DataError, match=message):
        load_dataset(_config(root), data_dir=tmp_path / "tfds")
    assert not any((tmp_path / "tfds").rglob("*.array_record*"))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_skip_bad_images_skips_and_counts(tmp_path, capsys):
    root = _write_folder(tmp_path / "photos")
    _truncate(root / "cat" / "001.png")
    splits = load_dataset(_config(root, skip_bad_images=True), data_dir=tmp_path / "tfds")
    assert len(splits.train) + len(splits.val) + len(splits.test) == 29
    assert "Skipped 1 unreadable image(s)" in capsys.readouterr().out


def test_a_killed_preparation_is_not_taken_for_a_data_set(tmp_path, monkeypatch):
    root = _write_folder(tmp_path / "photos")
    original = image_folder.ImageFolderSet._generate_examples

    def dies_midway(self, images, labels):
        yield from list(original(self, images, labels))[:5]
        raise KeyboardInterrupt

    monkeypatch.setattr(image_folder.ImageFolderSet, "_generate_examples", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        load_dataset(_config(root), data_dir=tmp_path / "tfds")
    monkeypatch.setattr(image_folder.ImageFolderSet, "_generate_examples", original)
    splits = load_dataset(_config(root), data_dir=tmp_path / "tfds")
    assert len(splits.train) + len(splits.val) + len(splits.test) == 30


def test_changed_files_prepare_anew(tmp_path):
    root = _write_folder(tmp_path / "photos")
    first = load_dataset(_config(root), data_dir=tmp_path / "tfds")
    _write_folder(root, per_class=12)
    second = load_dataset(_config(root), data_dir=tmp_path / "tfds")
    assert len(second.train) + len(second.val) + len(second.test) == 36 > len(first.train)


def test_link_loops_in_an_image_folder_are_not_walked_or_are_refused_in_one_line(tmp_path):
    root = _write_folder(
        tmp_path / "photos", classes={"cat": COLOURS["cat"], "dog": COLOURS["dog"]}, per_class=2
    )
    (root / "cat" / "up").symlink_to("..")  # links to folders inside a class are not followed
    (root / "cat" / "self").symlink_to("self")
    (root / "dog" / "002.png").symlink_to("002.png")  # a link to itself is no image file
    (root / "dog" / "003.png").symlink_to("000.png")  # a link to an image is one
    files = image_folder.image_files(root, image_folder.class_names(root))
    assert [(p.relative_to(root).as_posix(), label) for p, label in files] == [
        ("cat/000.png", 0), ("cat/001.png", 0), ("dog/000.png", 1), ("dog/001.png", 1), ("dog/003.png", 1)
    ]  # fmt: skip
    stamp = image_folder.fingerprint(root, None, None, False)
    assert len(stamp) == 16
    # a class folder that is a link to another disk: the files behind it count
    elsewhere = _write_folder(tmp_path / "elsewhere", classes={"emu": COLOURS["emu"]}, per_class=2)
    (root / "emu").symlink_to(elsewhere / "emu")
    linked = image_folder.fingerprint(root, None, None, False)
    assert linked != stamp
    _write_folder(elsewhere, classes={"emu": COLOURS["emu"]}, per_class=3)
    assert image_folder.fingerprint(root, None, None, False) not in (stamp, linked)
    (root / "emu").unlink()
    (root / "dog").rename(root / "wolf")  # a class renamed: the same files under another name
    assert image_folder.fingerprint(root, None, None, False) != stamp
    (root / "loop").symlink_to(".")  # a "class" holding the whole data set again
    with pytest.raises(DataError, match=f"^dataset: {re.escape(str(root / 'loop'))} is a link .*a loop") as e:
        load_dataset(_config(root), data_dir=tmp_path / "tfds")
    assert "\n" not in str(e.value)


def test_lfw_faces_are_the_real_200_photos(tmp_path):
    pytest.importorskip("skimage")
    splits = load_dataset(TrainConfig(dataset="lfw_faces"), data_dir=tmp_path / "tfds")
    assert splits.class_names == ("face", "not_face")
    labels = np.concatenate([splits.train.labels, splits.val.labels, splits.test.labels])
    assert np.bincount(labels).tolist() == [100, 100] and splits.train.images.shape[1:] == (25, 25, 1)
    assert (len(splits.val), len(splits.test)) == (32, 40)
    spec = load_dataset(
        TrainConfig(dataset="lfw_faces", image_size=(32, 32), channels=3), data_dir=tmp_path / "tfds"
    ).spec
    assert spec.image_shape == (32, 32, 3) and spec.num_classes == 2


def test_unknown_data_set_names_the_choices():
    with pytest.raises(DataError, match="unknown data set 'cifar10'.*fashion_mnist"):
        load_dataset(TrainConfig(dataset="cifar10"))


def test_stratified_split_keeps_every_class():
    labels = np.repeat([0, 1, 2], [10, 4, 2])
    kept, held = stratified_split(labels, 0.25, seed=0)
    assert np.bincount(labels[held]).tolist() == [2, 1, 1] and len(kept) + len(held) == 16
    assert not set(kept) & set(held)


def _synthetic(shape, classes, n=64, seed=0) -> Splits:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n).astype(np.int32)
    images = rng.integers(0, 60, (n, *shape)).astype(np.uint8)
    for i, label in enumerate(labels):  # a bright band whose row encodes the class
        row = int(label) * shape[0] // classes
        images[i, row : row + max(1, shape[0] // classes)] = 250
    part = Split(images, labels)
    return Splits(
        part, part, part, spec=DataSpec("synthetic", shape, [f"c{i}" for i in range(classes)], "test")
    )


@pytest.mark.parametrize(
    ("model", "shape", "classes"),
    [
        ("seed_cnn", (32, 32, 3), 2),
        ("convnet", (75, 75, 3), 7),
        ("vgg_bn", (32, 32, 3), 7),
        ("seed_cnn", (75, 75, 3), 7),
    ],
)
def test_models_train_on_any_shape_and_class_count(tmp_path, model, shape, classes):
    splits = _synthetic(shape, classes)
    config = TrainConfig(model=model, epochs=1, batch_size=32, steps_per_call=2)
    results = fit(config, splits, tmp_path / "run")
    assert np.isfinite(results["test_loss"])
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (
        saved["data"]["image_shape"] == list(shape) and saved["data"]["class_names"][-1] == f"c{classes - 1}"
    )
    _, state, _ = restore_run(tmp_path / "run")  # no flags: config.json alone
    assert state.input_shape == shape
    assert predict(state, splits.test.images[:3]).shape == (3, classes)


def test_sigmoid_head_loss_accuracy_and_probabilities(tmp_path):
    logits, labels = jnp.array([[2.0], [-1.0], [0.5]]), jnp.array([1, 1, 0])
    losses, correct = losses_and_correct(logits, labels)
    by_hand = [np.log1p(np.exp(-2.0)), np.log1p(np.exp(1.0)), np.log1p(np.exp(0.5))]
    np.testing.assert_allclose(losses, by_hand, rtol=1e-6)
    np.testing.assert_allclose(
        losses, optax.sigmoid_binary_cross_entropy(logits[:, 0], labels.astype(float)), rtol=1e-6
    )
    assert correct.tolist() == [True, False, False]  # 0.5 threshold: logit > 0
    splits = _synthetic((16, 16, 1), 2)
    config = TrainConfig(epochs=2, batch_size=16, head="sigmoid")
    results = fit(config, splits, tmp_path / "run")
    _, state, _ = restore_run(tmp_path / "run")
    assert state.params["logits"]["kernel"].shape[-1] == 1  # one sigmoid unit
    p = predict(state, splits.test.images)
    np.testing.assert_allclose(p.sum(1), 1, rtol=1e-6)
    assert results["test_accuracy"] == pytest.approx(float(np.mean(p.argmax(1) == splits.test.labels)))


def test_sigmoid_head_needs_two_classes():
    with pytest.raises(ValueError, match="head: one sigmoid output is for two classes; synthetic has 3"):
        model_for(TrainConfig(head="sigmoid"), _synthetic((16, 16, 1), 3).spec)


def test_a_model_is_checked_against_the_data_description_when_it_is_built():
    faces = DataSpec("lfw_faces", (25, 25, 1), ("face", "not_face"))
    with pytest.raises(ValueError, match="at least 32×32, got 25×25"):
        model_for(TrainConfig(model="mobilenet_v2", dataset="lfw_faces"), faces)
    with pytest.raises(ValueError, match="at least 75×75, got 64×64"):
        model_for(TrainConfig(model="inception_v3"), DataSpec("x", (64, 64, 3), ("a", "b")))
    model = model_for(TrainConfig(model="mobilenet_v2"), DataSpec("x", (32, 32, 3), ("a", "b", "c")))
    assert model is model_for(TrainConfig(model="mobilenet_v2", seed=7), DataSpec("y", (32, 32, 3), "abc"))


def test_val_split_last_holds_out_the_end_unshuffled_as_keras(idx_dir, tmp_path):
    """Keras' validation_split takes the last fraction of the training set, in order."""
    seeded = load_fashion_mnist(data_dir=tmp_path / "tfds", source_dir=idx_dir, val_fraction=0.25)
    last = load_fashion_mnist(
        data_dir=tmp_path / "tfds", source_dir=idx_dir, val_fraction=0.25, val_split="last"
    )
    in_order = np.concatenate([last.train.images, last.val.images])
    train_idx, val_idx = split_indices(len(in_order), 0.25, 42)  # where the seeded split drew from
    original = np.empty_like(in_order)
    original[train_idx], original[val_idx] = seeded.train.images, seeded.val.images
    np.testing.assert_array_equal(in_order, original)  # 'last' = the training set as stored, end held out
    assert len(last.val) == len(seeded.val) == round(0.25 * len(in_order))
    folder = _write_folder(tmp_path / "photos", fmt=None)
    splits = load_dataset(_config(folder, image_size=(8, 8), val_split="last"), data_dir=tmp_path / "tfds")
    assert len(splits.val) == round(0.2 * (len(splits.train) + len(splits.val)))


@pytest.mark.parametrize(("model", "size", "smallest"), [("seed_cnn", 3, "4×4"), ("lenet5", 1, "12×12")])
def test_an_image_size_too_small_for_the_network_is_refused_before_any_image_is_read(
    tmp_path, capsys, model, size, smallest
):
    root = _write_folder(tmp_path / "photos")
    data, run = tmp_path / "tfds", tmp_path / "run"
    argv = ["train", "--dataset", str(root), "--model", model, "--image-size", str(size), str(size)]
    assert main([*argv, "--data-dir", str(data), "--workdir", str(run)]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"error: input: {model} cannot take {size}×{size} images (a layer's output shrinks to nothing); the "
        f"smallest square size it takes is {smallest}: resize the images (--image-size H W) or choose "
        "another model\n"
    )
    assert not data.exists() and not run.exists()
    # the same check when the data decides the size (no --image-size): when the model is built
    spec = DataSpec("tiny", (size, size, 3), ["a", "b"])
    with pytest.raises(ValueError, match=f"smallest square size it takes is {smallest}"):
        model_for(TrainConfig(model=model), spec)
    side = int(smallest.split("×")[0])
    assert model_for(TrainConfig(model=model), DataSpec("ok", (side, side, 3), ["a", "b"]))


def _png_rgb16(path: Path, pixels: np.ndarray) -> None:
    """A 48-bit (16 bits per channel) RGB PNG, which Pillow reads but cannot write."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    h, w, _ = pixels.shape
    rows = b"".join(b"\0" + row.astype(">u2").tobytes() for row in pixels)
    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def test_every_bit_depth_is_scaled_not_clipped(tmp_path):
    rgb16 = np.array([[[0, 257, 65535], [32896, 65535, 0]]], np.uint16)  # (0, 1, 255), (128, 255, 0)
    _png_rgb16(tmp_path / "rgb16.png", rgb16)
    assert image_folder.decode(tmp_path / "rgb16.png").tolist() == [[[0, 1, 255], [128, 255, 0]]]
    grey16 = np.array([[0, 257, 32896, 65535]], np.uint16)  # 0, 1, 128, 255 in 8 bits
    Image.fromarray(grey16).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode == "I;16"
    assert image_folder.decode(tmp_path / "g16.png")[..., 0].tolist() == [[0, 1, 128, 255]]
    Image.fromarray(grey16.astype(np.int32)).save(tmp_path / "i32.tiff")
    assert image_folder.decode(tmp_path / "i32.tiff")[..., 0].tolist() == [[0, 1, 128, 255]]
    Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32)).save(tmp_path / "f.tiff")
    assert image_folder.decode(tmp_path / "f.tiff")[..., 0].tolist() == [[0, 128, 255]]
    Image.fromarray(np.array([[0.0, 900.0]], np.float32)).save(tmp_path / "hdr.tiff")
    with pytest.raises(DataError, match=r"hdr.tiff is a mode-F image with values 0..900, outside \[0, 1\]"):
        image_folder.decode(tmp_path / "hdr.tiff")
    palette = Image.new("P", (2, 1))
    palette.putpalette([0, 0, 0, 200, 40, 40] + [0] * 762)
    palette.putpixel((1, 0), 1)
    palette.save(tmp_path / "p.png", transparency=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow warns when a palette with transparency goes straight to RGB
        assert image_folder.decode(tmp_path / "p.png").tolist() == [[[0, 0, 0], [200, 40, 40]]]
