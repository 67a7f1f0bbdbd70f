"""Same vs valid padding: does keeping the border matter, and more so in a deeper stack?"""

from cnn.cli.main import run_script
from cnn.studies.grid import Variant
from cnn.studies.scripts import block, experiment_parser, run_experiment


def variants() -> list[Variant]:
    def net(padding: str, convs: int) -> Variant:
        blocks = [block(32, padding=padding, convs=convs), block(64, padding=padding, convs=convs)]
        name = f"{'deep-' if convs > 1 else ''}{padding}"
        return Variant(name, {"model": "convnet", "model_args": {"blocks": blocks}})

    return [net("same", 1), net("valid", 1), net("same", 2), net("valid", 2)]


def main(argv: list[str] | None = None) -> None:
    run_experiment("padding", variants(), experiment_parser(__doc__).parse_args(argv))


if __name__ == "__main__":
    run_script(main)
