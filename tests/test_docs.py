"""Every § reference of the repository resolves to a section heading of docs/."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKIP = {".venv", ".git", ".dvc", "reports", "data", "build", "dvc_plots", ".pytest_cache", "__pycache__"}
SUFFIXES = {".py", ".md", ".ipynb", ".yaml", ".yml", ".toml", ".cpp", ".cu", ".h", ".sbatch", ".txt", ".cfg"}
REF = re.compile(r"§\s*(\d+)(?:\s*[-–]\s*(\d+))?")
HEADING = re.compile(r"^#+ §(\d+)\b", re.M)


def _text_files():
    for path in ROOT.rglob("*"):
        rel = path.relative_to(ROOT)
        if any(part in SKIP or part.endswith(".egg-info") for part in rel.parts):
            continue
        if path.is_file() and (path.suffix in SUFFIXES or path.name == "Makefile"):
            yield path


def _sections() -> set[int]:
    return {int(n) for doc in (ROOT / "docs").rglob("*.md") for n in HEADING.findall(doc.read_text())}


def test_docs_hold_the_sections_the_code_cites():
    sections = _sections()
    assert set(range(1, 17)) <= sections, f"docs/ lacks sections {sorted(set(range(1, 17)) - sections)}"
    unresolved, count = [], 0
    for path in _text_files():
        for line_no, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            for first, last in REF.findall(line):
                count += 1
                for n in range(int(first), int(last or first) + 1):
                    if n not in sections:
                        unresolved.append(f"{path.relative_to(ROOT)}:{line_no}: §{n}")
    assert count > 100, f"only {count} § references found: is the scan looking in the right place?"
    assert not unresolved, "references without a docs/ heading:\n" + "\n".join(unresolved)


def test_no_reference_points_outside_the_repository():
    stale = [f"{p.relative_to(ROOT)}" for p in _text_files() if p.name != "test_docs.py"
             and re.search(r"SPEC(\.md)?\s*§", p.read_text(errors="replace"))]
    assert not stale, f"cite docs §N, not SPEC: {stale}"
