"""The README and the docs stay true: the README's two commands, its length, the generated pages,
and every path the README, results/README.md and docs/ cite, committed."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from pydantic import BaseModel

from harness.config import Config
from harness.docs import DOCS, generated

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()
CI = (REPO / ".ci" / "run").read_text()


def config_keys(node: type[BaseModel] = Config, prefix: str = "") -> list[str]:
    keys = []
    for name, info in node.model_fields.items():
        section = isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel)
        keys += config_keys(info.annotation, f"{prefix}{name}.") if section else [prefix + name]
    return keys


def test_first_screen_commands_and_ci_agree():
    first_screen = README[:1500]
    assert "pip install -r requirements.txt && python -m harness.run experiments/resnet18.yaml" in first_screen
    test_command = "pip install -r requirements.txt && python -m pytest -q tests"
    assert test_command in first_screen
    assert test_command in CI
    assert "mkdocs build --strict" in CI


def test_the_readme_is_a_first_screen_not_a_manual():
    assert len(README.splitlines()) <= 150
    assert not re.search(r"this session|/tmp/|\.\./shared", README)


def test_the_generated_pages_are_what_the_code_generates():
    """Run ``python -m harness.docs`` after changing the schema or a registry: this fails until then."""
    for page, text in generated().items():
        assert (DOCS / page).read_text(encoding="utf-8") == text, f"docs/{page} is stale: python -m harness.docs"


def test_every_config_key_and_its_description_is_in_the_reference():
    page = (DOCS / "reference" / "config.md").read_text(encoding="utf-8")
    missing = [key for key in config_keys() if f"| `{key}` |" not in page]
    assert not missing, missing
    undescribed = [line for line in page.splitlines() if line.startswith("| `") and line.rstrip().endswith("|  |")]
    assert not undescribed, undescribed


def cited_paths(text: str, base: Path) -> set[str]:
    """Relative links and `results/...` paths of a markdown file, as paths from the repository's root."""
    found = set()
    for target in re.findall(r"\]\(([^)#\s]+)", text):
        if not target.startswith(("http:", "https:", "mailto:")):
            found.add(str((base / target).resolve().relative_to(REPO)).rstrip("/"))
    found |= {p.rstrip("/") for p in re.findall(r"`(results/[^`\s*<>]+)`", text)}
    return found


def test_every_cited_path_is_committed():
    tracked = set(
        subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    )
    folders = {str(Path(p).parent) for p in tracked} | {str(parent) for p in tracked for parent in Path(p).parents}
    documents = [REPO / "README.md", REPO / "results" / "README.md", *sorted(DOCS.rglob("*.md"))]
    missing = [
        f"{doc.relative_to(REPO)}: {path}"
        for doc in documents
        for path in cited_paths(doc.read_text(encoding="utf-8"), doc.parent)
        if path not in tracked and path not in folders
    ]
    assert not missing, missing
