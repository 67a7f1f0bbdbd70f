"""The tfds builder over IDX files: splits, dtypes, the data description, reuse as whole arrays, and every
bad-input path."""

from __future__ import annotations

import gzip
import hashlib
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

from cnn.data import fashion_mnist as data
from cnn.data import prepared
from cnn.data.splits import split_indices
from tests.conftest import TEST_SIZE, TRAIN_SIZE, write_dataset, write_idx


def test_splits_sizes_dtypes_and_range(tiny_splits):
    assert len(tiny_splits.train) == TRAIN_SIZE * 4 // 5
    assert len(tiny_splits.val) == TRAIN_SIZE // 5
    assert len(tiny_splits.test) == TEST_SIZE
    for split in (tiny_splits.train, tiny_splits.val, tiny_splits.test):
        assert split.images.shape[1:] == (28, 28, 1)
        assert split.images.dtype == np.uint8 and split.labels.dtype == np.int32
        assert split.images.max() > 180  # the bright squares survived the round trip
    spec = tiny_splits.spec
    assert spec.name == "fashion_mnist" and spec.image_shape == (28, 28, 1) and spec.num_classes == 10
    assert spec.sizes == {"train": 480, "val": 120, "test": TEST_SIZE} and len(spec.fingerprint) == 16


def test_test_split_keeps_the_file_order_and_values(idx_dir, tiny_splits):
    images, labels = data.read_split(idx_dir, "test")
    np.testing.assert_array_equal(tiny_splits.test.labels, labels)
    np.testing.assert_array_equal(tiny_splits.test.images, images)


def test_train_and_validation_partition_the_train_file(idx_dir, tiny_splits):
    images, labels = data.read_split(idx_dir, "train")
    train_idx, val_idx = split_indices(len(labels), 0.2, seed=42)
    assert not set(train_idx) & set(val_idx) and len(train_idx) + len(val_idx) == len(labels)
    np.testing.assert_array_equal(tiny_splits.val.labels, labels[val_idx])
    np.testing.assert_array_equal(tiny_splits.train.labels, labels[train_idx])
    # A fixed seed: the same partition every time; another seed, another partition.
    np.testing.assert_array_equal(split_indices(len(labels), 0.2, seed=42)[1], val_idx)
    assert not np.array_equal(split_indices(len(labels), 0.2, seed=7)[1], val_idx)


def test_prepared_once_then_reused_without_the_source_files(tmp_path):
    source = tmp_path / "src"
    write_dataset(source, train_size=50, test_size=20)
    first = data.load_fashion_mnist(data_dir=tmp_path / "tfds", source_dir=source)
    shutil.rmtree(source)  # a second load must not need the files any more
    second = data.load_fashion_mnist(data_dir=tmp_path / "tfds", source_dir=source)
    np.testing.assert_array_equal(first.test.images, second.test.images)
    assert first.spec == second.spec


def test_preparing_leaves_nothing_in_the_systems_temporary_folder(tmp_path, monkeypatch):
    system_tmp = tmp_path / "system-tmp"
    system_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system_tmp))
    source = tmp_path / "src"
    write_dataset(source, train_size=50, test_size=20)
    data.load_fashion_mnist(data_dir=tmp_path / "tfds", source_dir=source)
    assert sorted(p.name for p in system_tmp.iterdir()) == []


def test_read_back_as_whole_arrays_not_record_by_record(tmp_path, monkeypatch):
    source = tmp_path / "src"
    write_dataset(source, train_size=50, test_size=20)
    first = data.load_fashion_mnist(data_dir=tmp_path / "tfds", source_dir=source)
    folder = data.FashionMnistIdx(data_dir=tmp_path / "tfds").data_dir
    assert (Path(folder) / prepared.ARRAYS).is_file()

    def no_records(*args):
        raise AssertionError("decoded record by record")

    monkeypatch.setattr(prepared, "read_records", no_records)
    second = data.load_fashion_mnist(data_dir=tmp_path / "tfds")
    np.testing.assert_array_equal(first.train.images, second.train.images)
    assert second.spec.fingerprint == first.spec.fingerprint


@pytest.mark.parametrize("damage", ["truncated", "missing info"])
def test_damaged_whole_arrays_are_decoded_again_from_the_records(tmp_path, damage):
    source = tmp_path / "src"
    write_dataset(source, train_size=50, test_size=20)
    first = data.load_fashion_mnist(data_dir=tmp_path / "tfds", source_dir=source)
    folder = Path(data.FashionMnistIdx(data_dir=tmp_path / "tfds").data_dir)
    if damage == "truncated":
        raw = (folder / prepared.ARRAYS).read_bytes()
        (folder / prepared.ARRAYS).write_bytes(raw[: len(raw) // 2])
    else:
        (folder / prepared.ARRAYS_INFO).unlink()
    second = data.load_fashion_mnist(data_dir=tmp_path / "tfds")
    np.testing.assert_array_equal(first.test.images, second.test.images)
    assert second.spec.fingerprint == first.spec.fingerprint
    assert (folder / prepared.ARRAYS_INFO).is_file()  # written again


def test_no_files_anywhere_names_the_three_ways(tmp_path):
    with pytest.raises(data.DataError) as e:
        data.load_fashion_mnist(data_dir=tmp_path / "tfds")
    message = str(e.value)
    assert "source_dir" in message and data.ENV_VAR in message and "dataset-fashion-mnist" in message
    assert not (tmp_path / "tfds" / "fashion_mnist_idx").exists()


def test_environment_variable_is_used(tmp_path, monkeypatch):
    write_dataset(tmp_path / "env", train_size=30, test_size=10)
    monkeypatch.setenv(data.ENV_VAR, str(tmp_path / "env"))
    splits = data.load_fashion_mnist(data_dir=tmp_path / "tfds")
    assert len(splits.test) == 10


def test_explicit_folder_missing_a_file_names_it(tmp_path):
    write_dataset(tmp_path / "src", train_size=30, test_size=10)
    (tmp_path / "src" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(data.DataError, match="t10k-labels-idx1-ubyte.gz"):
        data.load_fashion_mnist(data_dir=tmp_path / "tfds", source_dir=tmp_path / "src")


def _corrupt(path, how):
    with gzip.open(path) as f:
        raw = f.read()
    if how == "magic":
        raw = (0x0000_0999).to_bytes(4, "big") + raw[4:]
    elif how == "short":
        raw = raw[: len(raw) - 100]
    elif how == "header":
        raw = raw[:6]
    if how == "not-gzip":
        path.write_bytes(b"this is not gzip data")
    else:
        with gzip.open(path, "wb") as f:
            f.write(raw)


@pytest.mark.parametrize(
    ("how", "pattern"),
    [
        ("magic", "wrong IDX magic number"),
        ("short", "truncated or corrupt"),
        ("header", "shorter than its"),
        ("not-gzip", "not a readable gzip file"),
    ],
)
def test_corrupt_image_file_is_named(tmp_path, how, pattern):
    write_dataset(tmp_path / "src", train_size=30, test_size=10)
    bad = tmp_path / "src" / "train-images-idx3-ubyte.gz"
    _corrupt(bad, how)
    with pytest.raises(data.DataError, match=pattern) as e:
        data.load_fashion_mnist(data_dir=tmp_path / "tfds", source_dir=tmp_path / "src")
    assert str(bad) in str(e.value)
    assert not data.FashionMnistIdx(data_dir=tmp_path / "tfds").is_prepared()


def test_image_and_label_counts_must_agree(tmp_path):
    write_dataset(tmp_path / "src", train_size=30, test_size=10)
    write_idx(tmp_path / "src" / "t10k-labels-idx1-ubyte.gz", np.zeros(9, np.uint8))
    with pytest.raises(data.DataError, match="holds 10 images but .* holds 9 labels"):
        data.load_fashion_mnist(data_dir=tmp_path / "tfds", source_dir=tmp_path / "src")


def test_label_outside_the_classes_is_rejected(tmp_path):
    write_dataset(tmp_path / "src", train_size=30, test_size=10)
    write_idx(tmp_path / "src" / "t10k-labels-idx1-ubyte.gz", np.full(10, 12, np.uint8))
    with pytest.raises(data.DataError, match="label 12 is outside 0..9"):
        data.load_fashion_mnist(data_dir=tmp_path / "tfds", source_dir=tmp_path / "src")


def test_interrupted_preparation_is_not_mistaken_for_a_dataset(tmp_path, monkeypatch):
    write_dataset(tmp_path / "src", train_size=60, test_size=20)
    original = data.FashionMnistIdx._generate_examples

    def dies_midway(self, images, labels):
        for i, example in enumerate(original(self, images, labels)):
            if i == 25:
                raise KeyboardInterrupt("killed during preparation")
            yield example

    monkeypatch.setattr(data.FashionMnistIdx, "_generate_examples", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        data.load_fashion_mnist(data_dir=tmp_path / "tfds", source_dir=tmp_path / "src")
    assert not data.FashionMnistIdx(data_dir=tmp_path / "tfds").is_prepared()

    monkeypatch.setattr(data.FashionMnistIdx, "_generate_examples", original)
    splits = data.load_fashion_mnist(data_dir=tmp_path / "tfds", source_dir=tmp_path / "src")
    assert (len(splits.train), len(splits.val), len(splits.test)) == (48, 12, 20)


def _serve_official(tmp_path, monkeypatch, tamper: bool = False):
    """Makes a local folder stand in for the official server, with the files' real sizes and hashes."""
    server = tmp_path / "server"
    write_dataset(server, train_size=40, test_size=10)
    table = {}
    for name in data.OFFICIAL_FILES:
        raw = (server / name).read_bytes()
        table[name] = (len(raw), hashlib.sha256(raw).hexdigest())
    if tamper:
        (server / "t10k-images-idx3-ubyte.gz").write_bytes(b"tampered")
    monkeypatch.setattr(data, "OFFICIAL_URL", server.as_uri() + "/")
    monkeypatch.setattr(data, "OFFICIAL_FILES", table)


def test_download_when_no_local_files(tmp_path, monkeypatch):
    _serve_official(tmp_path, monkeypatch)
    splits = data.load_fashion_mnist(data_dir=tmp_path / "tfds")
    assert len(splits.test) == 10
    assert (tmp_path / "tfds" / "downloads" / "fashion_mnist" / "t10k-images-idx3-ubyte.gz").is_file()


def test_download_that_fails_verification_keeps_nothing(tmp_path, monkeypatch):
    _serve_official(tmp_path, monkeypatch, tamper=True)
    dest = tmp_path / "dl"
    with pytest.raises(data.DataError, match="failed verification"):
        data.download_official(dest)
    assert not (dest / "t10k-images-idx3-ubyte.gz").exists()
    assert sorted(p.name for p in dest.iterdir()) == [
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
    ]


def test_val_fraction_out_of_range(tmp_path):
    with pytest.raises(ValueError, match="val_fraction"):
        data.load_fashion_mnist(data_dir=tmp_path, val_fraction=1.0)


@pytest.mark.slow
def test_real_fashion_mnist_splits(real_tfds):
    splits = data.load_fashion_mnist(data_dir=real_tfds)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (48_000, 12_000, 10_000)
    assert splits.train.images.shape == (48_000, 28, 28, 1) and splits.test.images.dtype == np.uint8
    assert splits.test.labels[:10].tolist() == [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]  # the official file's order
    assert np.bincount(splits.test.labels).tolist() == [1000] * 10
