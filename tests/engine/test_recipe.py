"""The training recipe's knobs: optimizers and schedules (against optax's own), label smoothing and soft
targets, the device augmentations (reproducible, vmappable, each checked on a constructed batch), the
weights' moving average (checkpointed and resumed exactly), and bad values refused in one line."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cnn.cli.main import main
from cnn.config import TrainConfig
from cnn.engine.augment import ERASE, Augmentation, _crop, _erase, _mixed, augment
from cnn.engine.state import learning_rate, make_optimizer
from cnn.engine.steps import losses_and_correct
from cnn.errors import ConfigError
from cnn.studies.space import check_search, read_space
from cnn.train import fit
from tests.cli.test_misuse import one_line_error


# ------------------------------------------------------------------------------------------- bad values
@pytest.mark.parametrize(
    "flags, message",
    [
        (["--decay-rate", "-0.5"], "decay_rate: got -0.5, expected a number in (0, 1)"),
        (["--label-smoothing", "1"], "label_smoothing: got 1.0, expected a number in [0, 1)"),
        (["--mixup", "0"], "mixup: got 0.0, expected an alpha > 0"),
        (["--cutmix", "-1"], "cutmix: got -1.0, expected an alpha > 0"),
        (["--randaugment", "2", "--randaugment-ops", "rotate,warp"], "(unknown: ['warp'])"),
        (["--schedule", "warmup_cosine", "--warmup-epochs", "5", "--epochs", "5"], "fewer than epochs (5)"),
        (["--ema-decay", "1"], "ema_decay: got 1.0, expected a number in [0, 1)"),
        (["--erasing", "1.5"], "erasing: got 1.5, expected a probability in [0, 1]"),
        (["--momentum", "-0.1", "--optimizer", "sgd"], "momentum: got -0.1"),
        (["--grad-clip", "inf"], "grad_clip: got inf"),
        (["--model", "vgg_bn", "--flip"], "vgg_bn shifts and flips its training images itself"),
        (["--model", "vgg_bn", "--crop-padding", "2"], "pass --model-args '{\"augment\": false}'"),
    ],
)
def test_bad_recipe_values_are_refused_in_one_line_before_any_work(flags, message, tmp_path, capsys):
    assert main(["train", "--workdir", str(tmp_path / "run"), *flags]) == 2
    assert message in one_line_error(capsys)
    assert not (tmp_path / "run").exists()


def test_a_model_that_augments_itself_takes_no_second_crop_or_flip_in_python_either(tiny_splits, tmp_path):
    from cnn.data.spec import FASHION_MNIST
    from cnn.engine.state import model_for

    config = TrainConfig(model="vgg_bn", crop_padding=4, flip=True, epochs=1, limit_train=64)
    with pytest.raises(ValueError, match="--crop-padding and --flip would do it a second time"):
        fit(config, tiny_splits, tmp_path / "run")
    assert not (tmp_path / "run").exists()  # refused before the folder is made
    assert model_for(config, FASHION_MNIST).augment is True  # a run saved before the check still opens
    model = model_for(TrainConfig(model="vgg_bn", model_args={"augment": False}, flip=True), FASHION_MNIST)
    assert model.augment is False


def test_every_named_recipe_is_a_valid_config_for_its_model():
    from cnn.config import recipe, recipes
    from cnn.train import check_run_config

    assert {"strong", "strong_wrn"} <= set(recipes())
    for name in recipes():
        check_run_config(TrainConfig(**recipe(name)))  # fields, model arguments, augmentation in one place
    wrn = TrainConfig(**recipe("strong_wrn"))
    assert (wrn.model, wrn.model_args) == ("wide_resnet", {"depth": 16, "width": 4})


def test_the_tune_space_takes_the_new_fields():
    base = TrainConfig(epochs=3).to_dict()
    dims = read_space(
        ["label_smoothing=uniform(0,0.2)", "mixup=loguniform(0.1,1)", 'optimizer=choice("sgd","adam")']
    )
    check_search(base, dims)
    with pytest.raises(ValueError, match="label_smoothing"):
        check_search(base, read_space(["label_smoothing=uniform(0,1.5)"]))


# ---------------------------------------------------------------------------------- optimizer, schedule
def _updates(tx: optax.GradientTransformation, steps: int = 5) -> list[np.ndarray]:
    params = {"w": jnp.array([1.0, -2.0, 3.0])}
    state, out = tx.init(params), []
    for i in range(steps):
        grads = {"w": jnp.array([0.5, -1.0, 2.0]) * (i + 1)}
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        out.append(np.asarray(params["w"]))
    return out


def test_sgd_nesterov_clipping_and_schedules_are_optaxs_own():
    config = TrainConfig(optimizer="sgd", lr=0.1, momentum=0.8, nesterov=True, grad_clip=1.0, epochs=4)
    ours = _updates(make_optimizer(config, steps=3))
    theirs = _updates(
        optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(0.1, momentum=0.8, nesterov=True))
    )
    np.testing.assert_allclose(ours, theirs, rtol=1e-6)
    warm = TrainConfig(schedule="warmup_cosine", warmup_epochs=2, epochs=10, lr=0.01)
    assert learning_rate(warm, 0, steps=5) == 0.0 and learning_rate(warm, 10, steps=5) == pytest.approx(0.01)
    assert learning_rate(warm, 5, steps=5) == pytest.approx(0.005)
    step = TrainConfig(schedule="step", decay_epochs=3, decay_rate=0.5, lr=0.1, epochs=10)
    rates = [learning_rate(step, e * 4, steps=4) for e in range(7)]
    assert rates == pytest.approx([0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.025])
    injectable = make_optimizer(config, steps=3, injectable=True)
    np.testing.assert_allclose(_updates(injectable), theirs, rtol=1e-5)  # the same steps, stackable


def test_label_smoothing_and_soft_targets_are_the_cross_entropy_of_their_targets():
    logits = jnp.array([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]])
    labels = jnp.array([0, 2])
    losses, correct = losses_and_correct(logits, labels, smoothing=0.3)
    targets = np.eye(3)[[0, 2]] * 0.7 + 0.1
    expected = -(targets * jax.nn.log_softmax(logits)).sum(-1)
    np.testing.assert_allclose(losses, expected, rtol=1e-6)
    assert correct.tolist() == [True, True]
    soft = jnp.array([[0.6, 0.4, 0.0], [0.0, 0.5, 0.5]])
    losses, _ = losses_and_correct(logits, labels, soft)
    np.testing.assert_allclose(losses, -(soft * jax.nn.log_softmax(logits)).sum(-1), rtol=1e-6)
    binary, _ = losses_and_correct(jnp.array([[1.5]]), jnp.array([1]), smoothing=0.2)
    np.testing.assert_allclose(
        binary, optax.sigmoid_binary_cross_entropy(jnp.array([1.5]), jnp.array([0.9])), rtol=1e-6
    )


# ------------------------------------------------------------------------------------------ augmentation
def _batch(n: int = 6, size: int = 12) -> jax.Array:
    return jnp.asarray(np.random.default_rng(0).random((n, size, size, 1)), jnp.float32)


def test_augmentation_is_reproducible_vmappable_and_keeps_pixels_in_range():
    policy = Augmentation(crop_padding=2, flip=True, erasing=0.5, mixup=0.4, cutmix=1.0, randaugment=2)
    images, labels = _batch(), jnp.arange(6) % 3
    run = jax.jit(lambda k: augment(policy, k, images, labels, 3))
    a, ta = run(jax.random.PRNGKey(1))
    b, tb = run(jax.random.PRNGKey(1))
    c, _ = run(jax.random.PRNGKey(2))
    assert np.array_equal(a, b) and np.array_equal(ta, tb) and not np.array_equal(a, c)
    assert float(a.min()) >= 0 and float(a.max()) <= 1 and np.allclose(ta.sum(1), 1)
    many, _ = jax.vmap(lambda k: augment(policy, k, images, labels, 3))(
        jax.random.split(jax.random.PRNGKey(1), 3)
    )
    np.testing.assert_allclose(many[0], run(jax.random.split(jax.random.PRNGKey(1), 3)[0])[0], atol=1e-6)


def test_a_crop_after_padding_is_the_image_shifted_with_zeros_coming_in():
    image = _batch(1)[0]
    padded = np.pad(np.asarray(image), ((3, 3), (3, 3), (0, 0)))
    seen = set()
    for draw in np.random.default_rng(0).random((20, 8)).astype(np.float32):
        out = np.asarray(_crop(jnp.asarray(draw), image, 3))
        found = [
            (dy, dx)
            for dy in range(7)
            for dx in range(7)
            if np.array_equal(padded[dy : dy + 12, dx : dx + 12], out)
        ]
        assert len(found) == 1
        seen.add(found[0])
    assert len(seen) > 5  # the offsets vary with the draws


def test_erasing_fills_one_rectangle_with_noise_with_its_probability():
    image, noise = jnp.zeros((20, 20, 1)), jnp.ones((20, 20, 1))
    for draw in np.random.default_rng(1).random((8, 8)).astype(np.float32):
        draw[ERASE] = 0.9
        assert np.array_equal(_erase(jnp.asarray(draw), noise, image, 0.5), image)  # not drawn
        draw[ERASE] = 0.1
        changed = np.asarray(_erase(jnp.asarray(draw), noise, image, 0.5))[..., 0] != 0
        rows, cols = np.flatnonzero(changed.any(1)), np.flatnonzero(changed.any(0))
        assert changed[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].all()  # one filled box
        assert 0.02 * 400 * 0.5 <= changed.sum() <= 400 / 3 * 1.5


def test_mixup_and_cutmix_targets_weigh_what_was_mixed():
    images = jnp.stack([jnp.zeros((10, 10, 1)), jnp.ones((10, 10, 1))])
    targets = jnp.eye(2)
    for seed in range(4):
        mixed, soft = _mixed(Augmentation(mixup=0.5), jax.random.PRNGKey(seed), images, targets)
        lam = float(soft[0, 0])
        np.testing.assert_allclose(mixed[0], 1 - lam, atol=1e-6)  # 0 * lam + 1 * (1 - lam)
        cut, soft = _mixed(Augmentation(cutmix=1.0), jax.random.PRNGKey(seed), images, targets)
        pasted = float(np.asarray(cut[0]).mean())  # the share of image 0 now from image 1
        assert float(soft[0, 1]) == pytest.approx(pasted, abs=1e-6)


# ------------------------------------------------------------------------------- a run with every knob
KNOBS = dict(  # every knob but RandAugment (tested above) and flips (the tiny data's classes are positions)
    batch_size=32, epochs=3, patience=5, optimizer="sgd", lr=0.05, nesterov=True, schedule="warmup_cosine",
    warmup_epochs=1, grad_clip=5.0, label_smoothing=0.1, ema_decay=0.9, crop_padding=1, erasing=0.25,
    mixup=0.2, cutmix=1.0, limit_train=256, steps_per_call=1,
)  # fmt: skip


class Stop(Exception):
    pass


def test_a_run_with_every_knob_learns_and_resumes_exactly(tiny_splits, tmp_path):
    config = TrainConfig(**KNOBS)
    reference = fit(config, tiny_splits, tmp_path / "reference")
    history = json.loads((tmp_path / "reference" / "history.json").read_text())
    assert reference["val_accuracy"] > 0.3  # ten classes: chance is 0.1

    def stop_after_two(epoch, metrics):
        if epoch == 2:
            raise Stop

    with pytest.raises(Stop):
        fit(config, tiny_splits, tmp_path / "run", on_epoch_end=stop_after_two)
    resumed = fit(config, tiny_splits, tmp_path / "run")
    assert json.loads((tmp_path / "run" / "history.json").read_text()) == history
    assert resumed["test_accuracy"] == reference["test_accuracy"]


def test_the_moving_average_is_what_is_validated_and_restored(tiny_splits, tmp_path):
    from cnn.engine.evaluation import evaluate
    from cnn.runs.results import restore_run

    fit(
        TrainConfig(batch_size=32, epochs=2, patience=5, ema_decay=0.95, limit_train=256),
        tiny_splits,
        tmp_path,
    )
    results = json.loads((tmp_path / "results.json").read_text())
    _, state, _ = restore_run(tmp_path)
    assert getattr(state, "ema_params", None) is None  # the average restored as the weights
    assert evaluate(state, tiny_splits.test)["accuracy"] == pytest.approx(results["test_accuracy"])


def test_bad_fields_raise_config_errors_in_python_too():
    with pytest.raises(ConfigError, match="randaugment_ops"):
        TrainConfig(randaugment_ops="")


def test_a_picture_of_a_batch_before_and_after_each_augmentation(tmp_path):
    from cnn.analysis.inputs import plot_augmentations

    images = (np.random.default_rng(0).random((4, 16, 16, 1)) * 255).astype(np.uint8)
    figure = plot_augmentations(images, Augmentation(crop_padding=2, flip=True, mixup=0.2))
    assert [ax.get_ylabel() for ax in figure.axes[::4]] == [
        "before", "crop (padding 2)", "flip", "mixup (alpha 0.2)", "all together"
    ]  # fmt: skip
    plot_augmentations(images, path=tmp_path / "augmentations.png")
    assert (tmp_path / "augmentations.png").stat().st_size > 0


def test_the_ablation_takes_one_knob_away_at_a_time():
    import runpy
    from pathlib import Path

    from cnn.models.registry import build_model
    from cnn.studies.grid import resolve

    script = runpy.run_path(str(Path(__file__).resolve().parents[2] / "experiments" / "recipe.py"))
    variants = script["variants"]()
    warmups = {e: script["base_for"](e)["warmup_epochs"] for e in (1, 2, 8, 24, 60)}
    assert warmups == {1: 0, 2: 1, 8: 1, 24: 2, 60: 5}  # the strong recipe's share of warm-up, 5 of 60
    base = {**script["base_for"](3), "epochs": 3}
    configs = dict(zip([v.name for v in variants], resolve(base, variants), strict=True))
    reference = configs["strong"].to_dict()
    for name, config in configs.items():
        changed = {k for k, v in config.to_dict().items() if v != reference[k]}
        if name.startswith("minus-"):
            assert changed and changed <= set(script["ABLATIONS"][name]), name
    assert configs["plain"].optimizer == "adam" and configs["plain"].cutmix is None
    # the images are shifted and flipped in one place: the recipe's crop and flip, or (plain) the model's own
    augments = {name: build_model(c.model, **c.model_args).augment for name, c in configs.items()}
    assert augments == {name: name == "plain" for name in configs}
    assert configs["minus-crop"].crop_padding == 0 and configs["minus-flip"].flip is False


def test_the_ablation_runs_only_the_variants_asked_for(monkeypatch, capsys):
    import runpy
    from pathlib import Path

    import cnn.studies.scripts

    seen = {}

    def run_experiment(name, variants, args, base):
        seen.update(names=[v.name for v in variants], warmup=base["warmup_epochs"], epochs=args.epochs)

    monkeypatch.setattr(cnn.studies.scripts, "run_experiment", run_experiment)  # bound when the script loads
    script = runpy.run_path(str(Path(__file__).resolve().parents[2] / "experiments" / "recipe.py"))
    script["main"](["--variants", "plain", "strong", "--epochs", "12"])
    assert seen == {"names": ["strong", "plain"], "warmup": 1, "epochs": 12}
    with pytest.raises(SystemExit):
        script["main"](["--variants", "strongest"])
    assert "invalid choice: 'strongest'" in capsys.readouterr().err
