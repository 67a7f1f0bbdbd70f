"""Stride-1 convolution + max pooling vs stride-2 and stride-3 convolutions: size, accuracy and speed."""

from cnn.cli.main import run_script
from cnn.studies.grid import Variant
from cnn.studies.scripts import block, experiment_parser, run_experiment


def variants() -> list[Variant]:
    def net(name: str, **fields) -> Variant:
        return Variant(
            name, {"model": "convnet", "model_args": {"blocks": [block(32, **fields), block(64, **fields)]}}
        )

    return [
        net("stride1+maxpool2"),
        net("stride2-conv", downsample="strided_conv", pool=2),
        net("stride3-conv", downsample="strided_conv", pool=3),
    ]


def main(argv: list[str] | None = None) -> None:
    run_experiment("stride", variants(), experiment_parser(__doc__).parse_args(argv))


if __name__ == "__main__":
    run_script(main)
