"""``python -m rwkvlab.bench startup``: what each study notebook pays before its first line of work.

Every stage runs its notebook in a fresh kernel, which first executes the notebook's imports. For each notebook
of ``notebooks/``, this runs exactly those import statements in fresh processes and prints the median wall
time, the slowest top-level packages by ``python -X importtime`` and whether the heavy optional packages
(MONAI, torchvision, ``torch._dynamo``) were loaded. Numbers depend on the machine and its load: compare
before and after a change in one run of this command on each tree.
"""

from __future__ import annotations

import ast
import json
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = ["StartupRow", "notebook_imports", "measure_startup", "format_startup"]

HEAVY = ("monai", "torchvision", "torch._dynamo")
# The imports run in a namespace of their own: a notebook importing a name like ``start`` must not replace the clock.
_PROBE = ("import json, sys, time\nstart = time.perf_counter()\nexec(compile(sys.argv[1], 'imports', 'exec'), {})\n"
          "print(json.dumps({'seconds': time.perf_counter() - start, 'heavy': [m for m in %r if m in sys.modules]}))")


@dataclass(frozen=True)
class StartupRow:
    """One notebook: the median seconds of its imports in a fresh process, and the heavy packages they load."""

    notebook: str
    seconds: float
    heavy: tuple[str, ...]
    slowest: tuple[tuple[str, float], ...]


def notebook_imports(path: Path) -> str:
    """The import statements of a notebook's code cells, in order (what its kernel imports before working)."""
    cells = json.loads(Path(path).read_text())["cells"]
    statements = []
    for cell in cells:
        if cell["cell_type"] != "code":
            continue
        # IPython's line magics (%matplotlib inline) and shell lines are not Python: blank them, keep the rest
        source = "".join(cell["source"]).splitlines()
        tree = ast.parse("\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in source))
        statements += [ast.unparse(node) for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
    return "\n".join(statements)


def _slowest(imports: str, n: int = 3) -> tuple[tuple[str, float], ...]:
    """The top-level packages with the largest cumulative import time (``-X importtime``), in seconds."""
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", imports], capture_output=True, text=True,
                         check=True)
    totals: dict[str, float] = {}
    for line in out.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = (part.strip() for part in line.removeprefix("import time:").split("|"))
        if cumulative.isdigit() and "." not in name and name == name.lstrip():
            totals[name] = max(totals.get(name, 0.0), int(cumulative) / 1e6)
    return tuple(sorted(totals.items(), key=lambda kv: -kv[1])[:n])


def measure_startup(notebooks: list[Path], repeats: int = 3) -> list[StartupRow]:
    """Each notebook's imports, timed ``repeats`` times in fresh processes (median).

    Raises:
        RuntimeError: a notebook's imports fail (naming the notebook, with the traceback).
    """
    rows = []
    for path in notebooks:
        imports = notebook_imports(path)
        runs = []
        for _ in range(repeats):
            out = subprocess.run([sys.executable, "-c", _PROBE % (HEAVY,), imports], capture_output=True, text=True)
            if out.returncode != 0:
                raise RuntimeError(f"{path}: its imports fail in a fresh process:\n{out.stderr[-2000:]}")
            runs.append(json.loads(out.stdout))
        rows.append(StartupRow(path.stem, statistics.median(r["seconds"] for r in runs), tuple(runs[0]["heavy"]),
                               _slowest(imports)))
    return rows


def format_startup(rows: list[StartupRow]) -> list[str]:
    """One line per notebook, then the total."""
    head = f"{'notebook':<24} {'imports s':>9}  {'heavy packages loaded':<34} slowest top-level imports (s)"
    lines = [head, "-" * len(head)]
    for r in rows:
        slowest = ", ".join(f"{name} {s:.2f}" for name, s in r.slowest)
        lines.append(f"{r.notebook:<24} {r.seconds:9.2f}  {', '.join(r.heavy) or '-':<34} {slowest}")
    lines.append(f"{'sum over notebooks':<24} {sum(r.seconds for r in rows):9.2f}")
    return lines
