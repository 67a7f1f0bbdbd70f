"""MkDocs hooks of the documentation site (mkdocs.yml): pages that live elsewhere in the repository join the
site where they are, so nothing is copied and nothing drifts; and the README's generated blocks can be shown
on a page.

- `notebooks/*.ipynb` (rendered by mkdocs-jupyter) and `notebooks/README.md`, at `notebooks/` in the site;
- `experiments/README.md`, with the plots and tables of `experiments/results/` beside it, at
  `experiments/` (so its links `results/NAME/FILE` stay right);
- `<!-- block: NAME -->` on a page is replaced by the block NAME of the README or another page
  (`scripts/readme_tables.py`), e.g. the results table on the results page.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from mkdocs.plugins import event_priority
from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parent.parent
INCLUDE = re.compile(r"<!-- block: ([\w-]+) -->")


def added_files() -> list[str]:
    """Every file the site takes from outside docs/, by its path in the repository (which is its path in
    the site too)."""
    found = ["notebooks/README.md", "experiments/README.md"]
    found += [p.relative_to(ROOT).as_posix() for p in sorted((ROOT / "notebooks").glob("*.ipynb"))]
    for path in sorted((ROOT / "experiments" / "results").rglob("*")):
        if path.suffix in (".png", ".md") and path.is_file():
            found.append(path.relative_to(ROOT).as_posix())
    return found


@event_priority(100)  # before mkdocs-jupyter's on_files, which takes the notebooks among the files
def on_files(files: Files, config) -> Files:
    for src_uri in added_files():
        files.append(File(src_uri, str(ROOT), config["site_dir"], config["use_directory_urls"]))
    return files


def on_page_markdown(markdown: str, page, config, files) -> str:
    if not INCLUDE.search(markdown):
        return markdown
    spec = importlib.util.spec_from_file_location("readme_tables", ROOT / "scripts" / "readme_tables.py")
    tables = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tables)
    return INCLUDE.sub(lambda m: tables.block_text(m.group(1)), markdown)
