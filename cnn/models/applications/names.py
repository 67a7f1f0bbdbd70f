"""Keras' automatic layer names."""

from __future__ import annotations


class Names:
    """Keras' automatic layer names in the order layers are made: `conv2d`, `conv2d_1`, `conv2d_2`, ..."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def __call__(self, kind: str) -> str:
        n = self.counts.get(kind, 0)
        self.counts[kind] = n + 1
        return kind if n == 0 else f"{kind}_{n}"
