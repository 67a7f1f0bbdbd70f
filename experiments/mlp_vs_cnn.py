"""The dense baseline against the seed CNN, at similar parameter counts (and LeNet-5 for scale)."""

from cnn.cli.main import run_script
from cnn.studies.grid import Variant
from cnn.studies.scripts import experiment_parser, run_experiment


def variants() -> list[Variant]:
    return [
        Variant("seed_cnn", {"model": "seed_cnn"}),  # 333,526 parameters
        Variant("mlp-420", {"model": "mlp", "model_args": {"hidden": [420]}}),  # 333,910
        Variant("mlp-300-100", {"model": "mlp", "model_args": {"hidden": [300, 100]}}),  # 266,610
        Variant("lenet5", {"model": "lenet5"}),  # 61,706
    ]


def main(argv: list[str] | None = None) -> None:
    run_experiment("mlp_vs_cnn", variants(), experiment_parser(__doc__).parse_args(argv))


if __name__ == "__main__":
    run_script(main)
