"""The library's shape: imports go from the foundations up through data, models, engine and report, with the command
lines on top, and no two of rwkvlab's top-level modules and packages import each other, directly or around a
cycle. Every import counts, inside functions too: a lazy import is still a dependency."""

import subprocess
import sys
from pathlib import Path

import pytest

from rwkvlab.pipeline import _imports

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "rwkvlab"

# Each top-level module or package of rwkvlab, by layer; an import may only reach the same or a lower layer.
LAYERS = {
    "config": 0, "paths": 0, "io": 0, "progress": 0, "metrics": 0, "ops": 0,
    "data": 1,
    "models": 2,
    "engine": 3, "complexity": 3,
    "report": 4, "nnunet": 4,
    # command lines and tools, on top: each module's main, every package's __main__, and what only they use
    "cli": 5, "train": 5, "pretrain": 5, "evaluate": 5, "erf": 5, "predict": 5, "export": 5, "convert": 5,
    "pipeline": 5, "profile": 5, "notebook": 5, "bench": 5,
}


def unit(module: str) -> str:
    """The layer unit of a dotted module name: its top-level module or package under rwkvlab; ``cli`` for a
    package's ``__main__`` (the command line of that package sits on top of it)."""
    parts = module.split(".")
    return "cli" if parts[-1] == "__main__" else parts[1]


def import_edges() -> dict[tuple[str, str], list[str]]:
    """``(importer unit, imported unit)`` -> the files where that import is written, as the pipeline's own parser
    reads them (:func:`rwkvlab.pipeline._imports`, relative and lazy imports resolved; modules a file only starts in
    another process, ``torchrun -m rwkvlab.pretrain``, are not imports)."""
    edges: dict[tuple[str, str], list[str]] = {}
    for file in sorted(PACKAGE.rglob("*.py")):
        parts = file.relative_to(ROOT).with_suffix("").parts
        is_package = parts[-1] == "__init__"
        module = ".".join(parts[:-1] if is_package else parts)
        if module == "rwkvlab":
            continue  # rwkvlab/__init__.py: the package's lazy entry points, above every layer
        source = unit(module)
        for target in _imports(file.read_text(), module, is_package, started=False):
            if target != "rwkvlab" and unit(target) != source:
                edges.setdefault((source, unit(target)), []).append(str(file.relative_to(ROOT)))
    return edges


def test_every_unit_has_a_layer():
    units = {unit(".".join(f.relative_to(ROOT).with_suffix("").parts)) for f in PACKAGE.glob("*.py")
             if f.stem != "__init__"} | {d.name for d in PACKAGE.iterdir() if (d / "__init__.py").is_file()}
    assert units <= set(LAYERS), f"give {sorted(units - set(LAYERS))} a layer in LAYERS"


def test_no_import_reaches_a_higher_layer():
    upward = [f"{a} (layer {LAYERS[a]}) imports {b} (layer {LAYERS[b]}) in {', '.join(sorted(set(files)))}"
              for (a, b), files in import_edges().items() if LAYERS[b] > LAYERS[a]]
    assert not upward, "\n".join(upward)


def test_no_import_cycle_between_units():
    graph: dict[str, set[str]] = {}
    for a, b in import_edges():
        graph.setdefault(a, set()).add(b)
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        for nxt in sorted(graph.get(node, ())):
            if nxt in path:
                cycles.append(" -> ".join(path[path.index(nxt):] + [nxt]))
            elif len(path) < len(LAYERS):
                visit(nxt, path + [nxt])

    for start in sorted(graph):
        visit(start, [start])
    assert not cycles, "\n".join(sorted(set(cycles)))


@pytest.mark.parametrize("edge", [("report", "complexity"), ("engine", "data"), ("models", "ops")])
def test_the_edges_the_checks_rely_on_are_seen(edge):
    assert edge in import_edges()  # a parser that saw no import would pass the checks above vacuously


def test_training_and_evaluation_do_not_load_the_dataset_readers():
    # the readers load where raw data is read (rwkvlab.data.readers): a stage on a prepared cache must not depend
    # on them, or every reader change would rerun every training
    code = ("import sys, rwkvlab.data, rwkvlab.engine.runs, rwkvlab.engine.inference, rwkvlab.report.comparison\n"
            "print(sorted(m for m in sys.modules if m.startswith('rwkvlab.data.readers')))\n"
            "import rwkvlab.data.prepare\n"
            "print('rwkvlab.data.readers.busi' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == "[]" and out[1] == "True"
