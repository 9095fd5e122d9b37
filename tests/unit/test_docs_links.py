"""The repository's documentation stands on its own: every relative link in a tracked
Markdown file resolves to a file inside the repository, and no tracked file points at
the team's reference folder beside the checkout."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def tracked(*patterns: str) -> list[Path]:
    done = subprocess.run(["git", "ls-files", *patterns], cwd=ROOT, capture_output=True, text=True, check=True)
    return [ROOT / line for line in done.stdout.splitlines() if (ROOT / line).is_file()]


MARKDOWN = tracked("*.md")


def test_there_is_documentation_to_check() -> None:
    names = {p.relative_to(ROOT).as_posix() for p in MARKDOWN}
    assert {"README.md", "docs/market.md", "docs/deploy.md", "docs/ledger-schema.md"} <= names


@pytest.mark.parametrize("doc", MARKDOWN, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_stays_inside_the_repository(doc: Path) -> None:
    for target in LINK.findall(doc.read_text()):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a URL or an anchor in the same page
        path = (doc.parent / target.split("#", 1)[0]).resolve()
        assert path.is_relative_to(ROOT), f"{doc.name} links {target}, outside the repository"
        assert path.exists(), f"{doc.name} links {target}, which does not exist"


def test_no_file_points_at_the_reference_folder_beside_the_checkout() -> None:
    bad = re.compile(r"\.\./shared/(MARKET|STYLE|STACK)\.md|/work/shared|MARKET\.md")
    found = [f"{p.relative_to(ROOT)}:{n}" for p in tracked() if p.suffix in {".md", ".py", ".toml", ".yml", ".yaml",
                                                                            ".sh", ".txt", ".json", ""}
             for n, line in enumerate(p.read_text(errors="replace").splitlines(), 1) if bad.search(line)
             and p.name != "test_docs_links.py"]
    assert not found, found
