"""dvc.yaml's code deps are each stage's import closure, and DVC sees an edit exactly where that closure says."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from rwkvlab import pipeline

ROOT = Path(__file__).resolve().parents[1]


def test_every_stage_lists_its_import_closure():
    differ = pipeline.check(ROOT / "dvc.yaml")
    assert not differ, "code deps differ from the imports (python -m rwkvlab.pipeline --write):\n" + "\n".join(
        f"{name}: missing {sorted(set(d) - set(l))}, not imported {sorted(set(l) - set(d))}"
        for name, (l, d) in differ.items())


def test_closure_follows_every_kind_of_import(tmp_path):
    """An independent package exercising each rule: nested, relative, function-level, lazy ``__getattr__``,
    registry (``iter_modules``), a module started by name, package data, and the kernel loaders."""
    files = {
        "rwkvlab/__init__.py": "import importlib\ndef __getattr__(name):\n"
                               "    return importlib.import_module('rwkvlab.lazy')\n",
        "rwkvlab/lazy.py": "",
        "rwkvlab/a.py": "from rwkvlab.pkg import b\ndef f():\n    from .late import g\n",
        "rwkvlab/late.py": "",
        "rwkvlab/pkg/__init__.py": "",
        "rwkvlab/pkg/b.py": "from . import c\nCMD = ['-m', 'rwkvlab.child']\nDATA = 'tables'\n",
        "rwkvlab/pkg/c.py": "",
        "rwkvlab/pkg/tables/t.csv": "x\n",
        "rwkvlab/child.py": "from rwkvlab.ops import _cpu\n",
        "rwkvlab/ops/__init__.py": "",
        "rwkvlab/ops/_cpu.py": "",
        "rwkvlab/reg/__init__.py": "import importlib, pkgutil\nfor m in pkgutil.iter_modules(__path__):\n"
                                   "    importlib.import_module(f'{__name__}.{m.name}')\n",
        "rwkvlab/reg/one.py": "",
        "rwkvlab/unused.py": "",
        "nb.ipynb": '{"cells": [{"cell_type": "code", "source": ["%matplotlib inline\\n", "from rwkvlab import a\\n",'
                    ' "import rwkvlab.reg\\n", "from rwkvlab import anything\\n"]}]}',
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    modules, data = pipeline.closure([Path("nb.ipynb")], root=tmp_path)
    assert modules == {"rwkvlab", "rwkvlab.a", "rwkvlab.late", "rwkvlab.pkg", "rwkvlab.pkg.b", "rwkvlab.pkg.c",
                       "rwkvlab.child", "rwkvlab.ops", "rwkvlab.ops._cpu", "rwkvlab.reg", "rwkvlab.reg.one",
                       "rwkvlab.lazy"}
    assert data == {tmp_path / "rwkvlab/pkg/tables"}
    assert pipeline.code_deps(modules, data, tmp_path) == [
        "kernels", "rwkvlab/__init__.py", "rwkvlab/a.py", "rwkvlab/child.py", "rwkvlab/late.py", "rwkvlab/lazy.py",
        "rwkvlab/ops", "rwkvlab/pkg", "rwkvlab/reg"]
    # without the lazy name, `from rwkvlab import a` reaches only a's own imports
    (tmp_path / "nb.ipynb").write_text(files["nb.ipynb"].replace(', "from rwkvlab import anything\\n"', ""))
    assert "rwkvlab.lazy" not in pipeline.closure([Path("nb.ipynb")], root=tmp_path)[0]


def _scratch_pipeline(tmp_path: Path) -> Path:
    """The repository's sources (tracked and new, not ignored) in a fresh git repository, every stage output a
    placeholder and the lock written from them: ``dvc status`` is clean there without running a stage."""
    from dvc.repo import Repo

    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    scratch = tmp_path / "study"
    for rel in filter(None, listed):
        if (ROOT / rel).is_file():
            (scratch / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, scratch / rel)
    (scratch / "dvc.lock").unlink(missing_ok=True)
    subprocess.run(["git", "init", "-q"], cwd=scratch, check=True)
    repo = Repo(str(scratch))
    os.chdir(scratch)  # the caller's monkeypatch restores the working directory
    for stage in repo.index.stages:
        for out in stage.outs:
            path = Path(out.fs_path)
            if not path.exists():
                if path.suffix:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text("placeholder\n")
                else:
                    path.mkdir(parents=True)
    repo.commit(force=True)
    assert repo.status() == {}, "the scratch pipeline must start clean"
    return scratch


def _changed(repo, scratch: Path, edits: list[str]) -> dict[str, set[str]]:
    """Append a comment to each file of ``edits``; the stages whose deps DVC then sees modified, by dep path."""
    originals = {e: (scratch / e).read_bytes() for e in edits}
    try:
        for e in edits:
            (scratch / e).write_bytes(originals[e] + b"\n# edited\n")
        status = repo.status()
    finally:
        for e, text in originals.items():
            (scratch / e).write_bytes(text)
    changed: dict[str, set[str]] = {}
    for stage, entries in status.items():
        for entry in entries:
            if isinstance(entry, dict):
                for dep, how in entry.get("changed deps", {}).items():
                    if how == "modified":
                        changed.setdefault(stage, set()).add(dep)
    return changed


@pytest.mark.slow  # a scratch DVC project: ~30 s
def test_editing_a_module_marks_exactly_the_stages_that_import_it(tmp_path, monkeypatch):
    from dvc.repo import Repo

    monkeypatch.chdir(tmp_path)  # DVC resolves stage paths against the working directory
    scratch = _scratch_pipeline(tmp_path)
    monkeypatch.chdir(scratch)
    repo = Repo(str(scratch))
    modules = sorted(str(p.relative_to(scratch)) for p in (scratch / "rwkvlab").rglob("*.py"))
    # Every module edited at once: DVC hashes each dep path, so a stage sees module m through m itself or a folder
    # above it, and nothing else; one status call gives every module's stages.
    changed = _changed(repo, scratch, modules)
    stage_names = [s.addressing for s in repo.index.stages]
    derived = {name: pipeline.stage_code_deps(" ".join(str(stage.cmd).split()), scratch)
               for name, stage in ((s.addressing, s) for s in repo.index.stages)}

    def covers(deps, module):
        return any(module == d or module.startswith(d.rstrip("/") + "/") for d in deps)

    for module in modules:
        seen = {s for s in stage_names if covers(changed.get(s, ()), module)}
        expected = {s for s in stage_names if covers(derived[s], module)}
        assert seen == expected, f"{module}: DVC sees {sorted(seen)}, the imports say {sorted(expected)}"

    # the cases of the issue, read off the same status (DVC hashes each dep path on its own, so one edit at a
    # time would mark the same stages)
    def stages(module):
        return {s for s in stage_names if covers(changed.get(s, ()), module)}

    assert stages("rwkvlab/complexity/__init__.py") >= {"report", "ablation_tables"}
    assert not any(s.startswith(("train@", "evaluate@", "ablate@", "pretrain@")) for s in
                   stages("rwkvlab/complexity/__init__.py") | stages("rwkvlab/report/comparison.py"))
    assert "report" in stages("rwkvlab/report/comparison.py")
    evaluate = {s for s in stage_names if s.startswith("evaluate@")}
    assert evaluate | {"erf"} <= stages("rwkvlab/engine/inference.py")
    # the stages that read params.yaml: every notebook, and the nnU-Net command's study stages
    loads_params = {s for s in stage_names if "notebooks/" in " ".join(derived[s]) or s.startswith("nnunet_")}
    assert stages("rwkvlab/config.py") == loads_params
    # and one edit alone marks exactly those
    assert set(_changed(repo, scratch, ["rwkvlab/complexity/__init__.py"])) == stages("rwkvlab/complexity/__init__.py")


def test_lock_holds_no_stage_that_no_longer_exists():
    assert pipeline.stale_lock_entries(ROOT) == [], "python -m rwkvlab.pipeline --write prunes them"


def test_write_restores_a_missing_dep_and_keeps_comments(tmp_path):
    text = (ROOT / "dvc.yaml").read_text()
    broken = tmp_path / "dvc.yaml"
    broken.write_text(text.replace("      - rwkvlab/complexity/__init__.py\n", "", 1))
    assert "report" in pipeline.check(broken) or "ablation_tables" in pipeline.check(broken)
    pipeline.check(broken, write=True)
    assert pipeline.check(broken) == {}
    comments = [line.strip() for line in text.splitlines() if line.strip().startswith("#")]
    assert comments and all(c in broken.read_text() for c in comments)
