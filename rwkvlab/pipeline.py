"""The code each DVC stage runs, derived from its imports: ``dvc.yaml``'s code deps are checked, not remembered.

For a stage whose command executes a notebook (``papermill notebooks/<nb>.ipynb``) or a module
(``python -m rwkvlab.<module>``), :func:`stage_code_deps` reads the imports of that entry point and follows
them through ``rwkvlab`` (``ast``, no import is executed): module-level and function-level imports, the
packages whose ``__init__`` an import runs, ``from pkg import name`` of a submodule or of a name that the
package's ``__getattr__`` imports lazily, modules started by name in a subprocess (``"-m", "rwkvlab.train"``,
torchrun), package data folders a module names (``rwkvlab/report/paper``), and ``kernels/`` where the WKV
operator's backends (``rwkvlab.ops._cpu``, ``_cuda``) are reached. A package whose every module is in the
closure is listed as its folder. The stage's data deps (datasets, checkpoints, reports) stay in ``dvc.yaml``.

    python -m rwkvlab.pipeline            # check dvc.yaml: exit 1 naming each stage whose code deps differ
    python -m rwkvlab.pipeline --write    # rewrite those deps in place (comments kept), and drop the
                                          # dvc.lock entries of stages that no longer exist

``modulefinder`` would execute nothing either, but it does not see lazy ``__getattr__`` imports, subprocess
module names, registries that import every module of their package (``pkgutil.iter_modules``) or package
data, and it follows every third-party import, which we do not need.
"""

from __future__ import annotations

import argparse
import ast
import functools
import json
import re
import sys
from collections import deque
from pathlib import Path
from typing import Iterable, Sequence

from rwkvlab.io import atomic_write

__all__ = ["ROOT", "entry_points", "closure", "code_deps", "stage_code_deps", "is_code_dep", "check", "stale_lock_entries",
           "main"]

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "rwkvlab"
# modules that build and load the C++/CUDA sources of kernels/ on first use
KERNEL_LOADERS = {"rwkvlab.ops._cpu", "rwkvlab.ops._cuda"}
_NOTEBOOK = re.compile(r"\bpapermill\s+(\S+\.ipynb)")
_MODULE = re.compile(r"\bpython3?\s+-m\s+(rwkvlab[\w.]*)")


def _file(module: str, root: Path = ROOT) -> Path | None:
    """The source file of ``module`` (a package's ``__init__.py``), or ``None`` if it is not one of ours."""
    base = root.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _is_package(module: str, root: Path = ROOT) -> bool:
    return (root.joinpath(*module.split(".")) / "__init__.py").is_file()


def _parents(module: str) -> list[str]:
    """``rwkvlab.a.b`` -> ``[rwkvlab, rwkvlab.a]``: importing a module runs its packages' ``__init__`` first."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _lazy_imports(tree: ast.Module) -> set[str]:
    """Modules imported inside a module-level ``__getattr__`` (lazy package attributes)."""
    out: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == "__getattr__":
            for sub in ast.walk(node):
                if isinstance(sub, ast.Constant) and isinstance(sub.value, str) and sub.value.startswith(PACKAGE):
                    out.add(sub.value)
                elif isinstance(sub, ast.ImportFrom) and sub.module:
                    out.add(sub.module)
                elif isinstance(sub, ast.Import):
                    out.update(a.name for a in sub.names)
    return out


def _getattr_nodes(tree: ast.Module) -> set[int]:
    return {id(sub) for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "__getattr__"
            for sub in ast.walk(node)}


# cached on the source text: every stage's closure walks the same modules (check: 4 s -> 0.6 s); a process is
# assumed not to add or remove modules between calls
@functools.lru_cache(maxsize=None)
def _imports(source: str, module: str, is_package: bool, root: Path = ROOT, started: bool = True) -> frozenset[str]:
    """Our modules that ``source`` (the code of ``module``) imports or, with ``started``, starts by name in another
    process (a stage depends on both; the layers of tests/test_imports.py only on the imports)."""
    tree = ast.parse(source)
    skip = _getattr_nodes(tree)
    found: set[str] = set()
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                if _file(sub, root) is not None:
                    found.add(sub)
                elif _is_package(target, root):
                    init = _file(target, root)
                    lazy = _lazy_imports(ast.parse(init.read_text())) if init else set()
                    found.update(lazy)
        elif started and isinstance(node, ast.Constant) and isinstance(node.value, str) and \
                node.value.startswith(PACKAGE + ".") and _file(node.value, root) is not None:
            found.add(node.value)  # a module started by name: ["-m", "rwkvlab.train"], torchrun
    if is_package and "iter_modules(__path__)" in source:  # a package that imports all its modules (registries)
        folder = root.joinpath(*module.split("."))
        found.update(f"{module}.{f.stem}" for f in folder.glob("*.py") if f.stem not in ("__init__", "__main__"))
        found.update(f"{module}.{d.name}" for d in folder.iterdir() if (d / "__init__.py").is_file())
    return frozenset(m for m in found if m.split(".")[0] == PACKAGE and _file(m, root) is not None)


@functools.lru_cache(maxsize=None)
def _data_folders(module: str, source: str, root: Path = ROOT) -> frozenset[Path]:
    """Folders of data (no ``__init__.py``) inside ``module``'s package that it names in a string."""
    path = _file(module, root)
    folder = path.parent
    names = {n.value for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    return frozenset(d for d in folder.iterdir() if d.is_dir() and d.name in names
                     and not (d / "__init__.py").exists() and d.name != "__pycache__")


def _notebook_source(path: Path) -> str:
    cells = json.loads(path.read_text())["cells"]
    code = ["\n".join(line for line in "".join(c["source"]).splitlines() if not line.lstrip().startswith(("%", "!")))
            for c in cells if c["cell_type"] == "code"]
    return "\n".join(code)


def entry_points(cmd: str) -> tuple[list[Path], list[str]]:
    """The notebooks and ``python -m`` modules a stage command runs."""
    return [Path(n) for n in _NOTEBOOK.findall(cmd)], _MODULE.findall(cmd)


def closure(notebooks: Iterable[Path] = (), modules: Iterable[str] = (), root: Path = ROOT) -> tuple[set[str], set[Path]]:
    """Every module of ours that running ``notebooks`` and ``python -m <modules>`` can import, and the data folders
    they read from inside the package.

    Returns:
        (module names, data folders).
    """
    todo: deque[str] = deque()
    for nb in notebooks:
        todo.extend(_imports(_notebook_source(root / nb), "__notebook__", False, root))
    for m in modules:
        todo.append(m)
        if _is_package(m, root) and _file(f"{m}.__main__", root):
            todo.append(f"{m}.__main__")
    seen: set[str] = set()
    data: set[Path] = set()
    while todo:
        module = todo.popleft()
        if module in seen:
            continue
        seen.add(module)
        source = _file(module, root).read_text()
        todo.extend(_parents(module))
        todo.extend(_imports(source, module, _is_package(module, root), root))
        data |= _data_folders(module, source, root)
    return seen, data


def _package_files(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*.py") if "__pycache__" not in p.parts}


def code_deps(modules: set[str], data: set[Path] = frozenset(), root: Path = ROOT) -> list[str]:
    """The dvc.yaml deps (relative paths) that cover ``modules`` and ``data``: a package folder where every module
    under it is used (its data folders too), else the files; plus ``kernels`` where the operator's backends are."""
    files = {_file(m, root) for m in modules}
    covered: set[Path] = set()
    folders: list[Path] = []
    for package in sorted((m for m in modules if _is_package(m, root) and m != PACKAGE), key=lambda m: m.count(".")):
        folder = root.joinpath(*package.split("."))
        if any(folder.is_relative_to(f) for f in folders):
            continue
        inside = _package_files(folder)
        extra = {d for d in folder.rglob("*") if d.is_dir() and d.name != "__pycache__" and
                 not (d / "__init__.py").exists() and any(x.suffix != ".py" for x in d.iterdir())}
        if inside <= files and extra <= data:
            folders.append(folder)
            covered |= inside | extra
    deps = [str(f.relative_to(root)) for f in folders]
    deps += [str(f.relative_to(root)) for f in files - covered]
    deps += [str(d.relative_to(root)) for d in data - covered]
    if modules & KERNEL_LOADERS:
        deps.append("kernels")
    return sorted(deps)


def stage_code_deps(cmd: str, root: Path = ROOT) -> list[str]:
    """The code deps of a stage command: its entry notebooks (themselves deps too) and what they import."""
    notebooks, modules = entry_points(cmd)
    found, data = closure(notebooks, modules, root)
    return sorted([str(n) for n in notebooks] + code_deps(found, data, root))


def is_code_dep(dep: str) -> bool:
    """A dep that :func:`stage_code_deps` owns: our sources, the kernels, the notebooks."""
    return dep == "kernels" or dep.startswith(("rwkvlab/", "kernels/", "notebooks/"))


def check(dvc_yaml: Path = ROOT / "dvc.yaml", write: bool = False, root: Path = ROOT) -> dict[str, tuple[list, list]]:
    """Stages whose listed code deps differ from the derived ones: ``{stage: (listed, derived)}``; with ``write``,
    ``dvc.yaml`` is rewritten with the derived ones (each in place of the listed, comments kept)."""
    from ruamel.yaml import YAML

    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.width = 4096
    yaml.indent(mapping=2, sequence=4, offset=2)
    doc = yaml.load(dvc_yaml.read_text())
    differ = {}
    for name, stage in doc["stages"].items():
        body = stage["do"] if "foreach" in stage else stage
        deps = body.get("deps", [])
        listed = [d for d in deps if isinstance(d, str) and is_code_dep(d)]
        derived = stage_code_deps(" ".join(str(body["cmd"]).split()), root)
        if sorted(listed) != derived:
            differ[name] = (sorted(listed), derived)
            if write:
                keep = [d for d in deps if not (isinstance(d, str) and is_code_dep(d))]
                deps.clear()
                deps.extend(derived + keep)
                body["deps"] = deps
    if write and differ:
        _dump(yaml, doc, dvc_yaml)
    return differ


def _dump(yaml, doc, path: Path) -> None:
    """Write a ruamel round-trip document without leaving a half-written file."""
    atomic_write(path, lambda tmp: yaml.dump(doc, tmp))


def stale_lock_entries(root: Path = ROOT, prune: bool = False) -> list[str]:
    """Stages that ``dvc.lock`` records but ``dvc.yaml`` no longer defines (a renamed run, a dataset dropped from
    ``prepare.datasets``); with ``prune``, they are removed from the lock (the other entries stay as they are)."""
    from dvc.repo import Repo
    from ruamel.yaml import YAML

    lock_file = root / "dvc.lock"
    if not lock_file.is_file():
        return []
    yaml = YAML()
    yaml.width = 4096
    lock = yaml.load(lock_file.read_text())
    defined = {stage.addressing for stage in Repo(str(root)).index.stages}
    stale = sorted(set(lock["stages"]) - defined)
    if prune and stale:
        for name in stale:
            del lock["stages"][name]
        _dump(yaml, lock, lock_file)
    return stale


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rwkvlab.pipeline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dvc-yaml", type=Path, default=ROOT / "dvc.yaml")
    parser.add_argument("--write", action="store_true", help="rewrite the code deps that differ")
    args = parser.parse_args(argv)
    differ = check(args.dvc_yaml, args.write)
    for name, (listed, derived) in differ.items():
        missing, extra = sorted(set(derived) - set(listed)), sorted(set(listed) - set(derived))
        print(f"{name}: missing {missing}, not imported {extra}" + (" (rewritten)" if args.write else ""))
    if not differ:
        print(f"{args.dvc_yaml}: every stage's code deps match its imports")
    stale = stale_lock_entries(args.dvc_yaml.parent, prune=args.write)
    if stale:
        print(f"dvc.lock: entries of stages that no longer exist {stale}" + (" (removed)" if args.write else ""))
    return 1 if (differ or stale) and not args.write else 0


if __name__ == "__main__":
    sys.exit(main())
