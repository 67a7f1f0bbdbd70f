"""The README and the documentation site: short README, generated pages and tables current, the README's
notebook code runs, and `mkdocs build --strict` fails on a broken link, a missing reference or a docstring
that does not render."""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import cnn
from cnn.data import fashion_mnist

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
# Every block `scripts/readme_tables.py` writes, wherever its markers are.
BLOCKS = ["results", "packages", "layout", "zoo", "famous", "bench", "bench-gpu", "overhead", "placement"]


def script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_readme_is_a_front_page():
    lines = README.read_text().splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines: move material into docs/"
    for command in ("make train", "make test"):
        assert command in README.read_text()


def test_every_block_lives_in_exactly_one_file():
    tables = script("readme_tables")
    for block in BLOCKS:
        marker = f"<!-- {block}:start -->"
        holders = [p for p in tables.block_files() if p.is_file() and marker in p.read_text()]
        assert len(holders) == 1, f"block {block} is in {holders}: it must be in one file"
        assert f"<!-- {block}:end -->" in holders[0].read_text()


def test_a_block_no_file_holds_is_named():
    with pytest.raises(SystemExit, match="no file holds the block 'nonesuch'"):
        script("readme_tables").block_text("nonesuch")


def test_the_readme_package_map_is_the_generated_one():
    tables = script("readme_tables")
    assert tables.block_text("packages") == tables.packages_table(), (
        "run: python scripts/readme_tables.py packages"
    )


def test_the_generated_pages_are_current():
    """docs/reference/cli.md, config.md and api/ are what the parser, TrainConfig and the packages give."""
    stale = script("docs_pages").stale_pages()
    assert not stale, f"out of date: {stale}; run: python scripts/docs_pages.py"


def test_the_reference_covers_every_command_flag_and_field():
    import dataclasses

    from cnn.cli.main import parser
    from cnn.config import TrainConfig

    cli = (ROOT / "docs" / "reference" / "cli.md").read_text()
    config = (ROOT / "docs" / "reference" / "config.md").read_text()
    commands = next(a for a in parser()._actions if hasattr(a, "choices") and a.choices).choices
    for name, command in commands.items():
        assert f"## `{name}`" in cli
        for action in command._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            for flag in action.option_strings:
                assert f"`{flag}`" in cli, f"{name} {flag} is not in docs/reference/cli.md"
    for field in dataclasses.fields(TrainConfig):
        assert f"| `{field.name}` |" in config, f"{field.name} is not in docs/reference/config.md"


def test_the_config_reference_states_each_check_in_the_configs_own_words():
    pages = script("docs_pages")
    assert pages.field_check("lr") == "a finite number > 0"
    assert pages.field_check("epochs") == "an integer >= 1; at most 2,147,483,647"
    assert pages.field_check("split_seed") == "any value of its type (not checked)"


def readme_notebook_code() -> str:
    section = README.read_text().split("## In a notebook", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "the README's 'In a notebook' section holds one python block"
    return blocks[0]


def test_the_readme_notebook_code_is_short_and_runs(idx_dir, tmp_path, monkeypatch, capsys):
    """The README's quickstart as written, on the tiny data set (its folder and tfds dir swapped in)."""
    code = readme_notebook_code()
    assert len(code.strip().splitlines()) <= 20
    real = fashion_mnist.load_fashion_mnist
    monkeypatch.setattr(
        cnn,
        "load_fashion_mnist",
        lambda **kw: real(data_dir=tmp_path / "tfds", source_dir=idx_dir, **kw),
        raising=False,
    )
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    assert (tmp_path / "runs" / "notebook" / "results.json").is_file()
    printed = capsys.readouterr().out
    assert 'Model: "seed_cnn"' in printed
    assert re.search(r"test accuracy [01]\.\d{4} at epoch \d", printed)


def mkdocs_build(config: Path, site: Path) -> subprocess.CompletedProcess:
    mkdocs = Path(sys.executable).with_name("mkdocs")
    assert mkdocs.is_file(), "mkdocs is not installed: pip install -e '.[docs]' (make docs does it)"
    env = {**os.environ, "CNN_DOCS_EXECUTE": "false", "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run(
        [str(mkdocs), "build", "--strict", "-f", str(config), "-d", str(site)],
        capture_output=True,
        text=True,
        env=env,
        cwd=config.parent,
        timeout=600,
    )


@pytest.mark.slow
def test_the_site_builds_strictly(tmp_path):
    done = mkdocs_build(ROOT / "mkdocs.yml", tmp_path / "site")
    assert done.returncode == 0, done.stderr[-3000:]
    site = tmp_path / "site"
    for page in ("index.html", "reference/cli/index.html", "reference/api/engine/index.html"):
        assert (site / page).is_file(), page
    assert "train_step" in (site / "reference/api/engine/index.html").read_text()
    assert "LIMIT_TRAIN" in (site / "notebooks/02_train_fashion_mnist/index.html").read_text()  # its cells


@pytest.mark.slow
def test_a_broken_link_fails_the_build_naming_the_page_and_the_link(tmp_path):
    """The site's own config on a copy of docs/ with one broken link."""
    for name in ("mkdocs.yml", "README.md"):
        shutil.copy(ROOT / name, tmp_path / name)
    for name in ("cnn", "scripts", "notebooks", "experiments", "tests"):
        (tmp_path / name).symlink_to(ROOT / name)
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    page = tmp_path / "docs" / "how-to" / "gpu-run.md"
    page.write_text(page.read_text() + "\nSee [the missing page](no-such-page.md).\n")
    done = mkdocs_build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert done.returncode != 0
    assert "how-to/gpu-run.md" in done.stderr and "no-such-page.md" in done.stderr
