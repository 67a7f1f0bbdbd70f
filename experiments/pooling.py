"""Max vs average vs no pooling vs strided convolution vs depth-wise max; global-average head vs flatten."""

from cnn.cli.main import run_script
from cnn.studies.grid import Variant
from cnn.studies.scripts import block, experiment_parser, run_experiment

DOWNSAMPLING = ("max", "avg", "none", "strided_conv", "depthwise_max")


def variants() -> list[Variant]:
    def net(name: str, downsample: str, head: str = "flatten_dense") -> Variant:
        blocks = [block(32, downsample=downsample), block(64, downsample=downsample)]
        return Variant(name, {"model": "convnet", "model_args": {"blocks": blocks, "head": head}})

    return [net(d, d) for d in DOWNSAMPLING] + [net("max+global_avg_head", "max", head="global_avg")]


def main(argv: list[str] | None = None) -> None:
    run_experiment("pooling", variants(), experiment_parser(__doc__).parse_args(argv))


if __name__ == "__main__":
    run_script(main)
