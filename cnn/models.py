"""The networks, built by name through one registry; every model returns logits."""

from __future__ import annotations

import difflib

import flax.linen as nn
import jax

from cnn.data import NUM_CLASSES
from cnn.layers import Conv2D, Dense, Flatten, MaxPool


class SeedCNN(nn.Module):
    """The sources' main network: two conv + max-pool blocks, a 100-unit dense layer, dropout, 10 logits."""

    num_classes: int = NUM_CLASSES
    dropout_rate: float = 0.4

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = Conv2D(32, (3, 3), padding="SAME", activation="relu", name="conv1")(x)
        x = MaxPool(2, name="pool1")(x)
        x = Conv2D(64, (3, 3), padding="SAME", activation="relu", name="conv2")(x)
        x = MaxPool(2, name="pool2")(x)
        x = Flatten(name="flatten")(x)
        x = Dense(100, activation="relu", name="dense1")(x)
        x = nn.Dropout(self.dropout_rate, deterministic=not train, name="dropout")(x)
        return Dense(self.num_classes, name="logits")(x)


MODELS: dict[str, type[nn.Module]] = {
    "seed_cnn": SeedCNN,
}


def check_model_name(name: str) -> None:
    """Raises a ValueError naming the registered models (and the closest ones) if `name` is unknown."""
    if name not in MODELS:
        close = difflib.get_close_matches(name, MODELS, n=3, cutoff=0.4)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"model: unknown model {name!r}; choose one of {sorted(MODELS)}.{hint}")


def build_model(name: str, **kwargs) -> nn.Module:
    """The model registered as `name`, with `kwargs` overriding its fields."""
    check_model_name(name)
    return MODELS[name](**kwargs)
