"""Study profiles: switch ``params.yaml`` between the demo study and the paper's in place::

    python -m rwkvlab.profile {demo,paper} [--params params.yaml] [--profiles DIR]

A profile (``profiles/<name>.yaml``, default folder: ``profiles/`` beside the params file) maps dotted keys of
the params file (``train.runs``, ``ablate.dataset``, ...) to their values. Every profile of the folder holds the
same keys, so switching to one and back restores the file. Only those keys' values are rewritten, as text: each
value is the profile's own text (comments and layout included) re-indented to the key's place, and every other
line of the params file, comments included, stays byte for byte. The keys are located with ruamel.yaml's
round-trip parser (line and column of each key), and the rewritten file is parsed again to check that each key
now holds the profile's value.
"""

from __future__ import annotations

import argparse
import io
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap
from ruamel.yaml.error import YAMLError

from rwkvlab.io import atomic_write

__all__ = ["Profile", "read_profile", "profile_names", "apply_profile", "main"]


@dataclass(frozen=True)
class Profile:
    """The keys a profile sets: ``texts[key]`` is the value as written after ``key:`` (its first line's rest, then
    its continuation lines, indented relative to the key), ``values[key]`` the value it parses to."""

    name: str
    texts: dict[str, list[str]]
    values: dict[str, Any]


def _parse(text: str, where: str) -> Any:
    try:
        return YAML(typ="rt").load(text)
    except YAMLError as err:
        raise ValueError(f"{where}: not valid YAML: {err}") from None


def _plain(value: Any) -> Any:
    """A round-trip node as plain Python (dicts, lists, scalars), for comparing values."""
    buf = io.StringIO()
    YAML(typ="rt").dump({"v": value}, buf)
    return YAML(typ="safe").load(buf.getvalue())["v"]


def _is_content(line: str) -> bool:
    stripped = line.strip()
    return bool(stripped) and not stripped.startswith("#")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _span(lines: list[str], line: int, col: int, key: str, where: str) -> tuple[int, int]:
    """Where the value of the block-mapping key at (``line``, ``col``) is written.

    Returns:
        (column just after the key's colon on its line, first line after the value). The value's lines
        are the key's line and the following lines more indented than the key (or, for a block sequence, its
        ``-`` items at the key's column), without trailing blank and comment lines: those belong to what follows.
    """
    after = lines[line][col + len(key):]
    if lines[line][col:col + len(key)] != key or not after.lstrip(" ").startswith(":"):
        raise ValueError(f"{where}: key {key!r} on line {line + 1} is not written plainly as `{key}:`; "
                         f"profiles rewrite plain keys only")
    colon = col + len(key) + _indent(after) + 1
    end, last = line + 1, line + 1
    while end < len(lines):
        text = lines[end]
        if _is_content(text):
            if _indent(text) < col or (_indent(text) == col and not text[col:].startswith("- ")):
                break
            last = end + 1
        end += 1
    return colon, last


def _locate(root: Any, dotted: str, where: str) -> tuple[CommentedMap, str]:
    """The mapping that holds the last part of ``dotted`` in a round-trip document, and that part."""
    node, (*parents, leaf) = root, dotted.split(".")
    for part in parents:
        if not isinstance(node, CommentedMap) or part not in node:
            raise ValueError(f"{where}: has no key {dotted!r} (no {part!r})")
        node = node[part]
    if not isinstance(node, CommentedMap) or leaf not in node:
        raise ValueError(f"{where}: has no key {dotted!r}")
    return node, leaf


def read_profile(path: Path) -> Profile:
    """Read ``path``: a mapping of dotted params keys to values.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a mapping of dotted keys, or a key not written plainly.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"profile {path} not found")
    text = path.read_text()
    root = _parse(text, str(path))
    if not isinstance(root, CommentedMap) or not root:
        raise ValueError(f"{path}: a profile is a mapping of dotted params keys (e.g. ablate.dataset: synapse)")
    lines = text.split("\n")
    texts, values = {}, {}
    for key in root:
        if not isinstance(key, str):
            raise ValueError(f"{path}: key {key!r} is not a dotted params key")
        line, col = root.lc.key(key)
        colon, end = _span(lines, line, col, key, str(path))
        texts[key] = [lines[line][colon:], *lines[line + 1:end]]
        values[key] = _plain(root[key])
    return Profile(name=path.stem, texts=texts, values=values)


def profile_names(profiles_dir: Path) -> list[str]:
    """The profiles of a folder (``<name>.yaml``), sorted."""
    return sorted(p.stem for p in Path(profiles_dir).glob("*.yaml"))


def apply_profile(params_file: Path, name: str, profiles_dir: Path | None = None) -> list[str]:
    """Rewrite the keys of profile ``name`` in ``params_file`` in place (atomically); every other line stays.

    Args:
        profiles_dir: the profiles folder; default ``profiles/`` beside the params file.

    Returns:
        the keys whose values changed (none when the file already holds the profile).

    Raises:
        FileNotFoundError: no params file, or no profile ``name``.
        ValueError: the folder's profiles set different keys, a key missing from the params file, or a
            rewrite that does not read back as the profile's values.
    """
    params_file = Path(params_file)
    profiles_dir = params_file.resolve().parent / "profiles" if profiles_dir is None else Path(profiles_dir)
    if not params_file.is_file():
        raise FileNotFoundError(f"params file {params_file} not found")
    names = profile_names(profiles_dir)
    if name not in names:
        raise FileNotFoundError(f"no profile {name!r} in {profiles_dir}; profiles: {', '.join(names) or 'none'}")
    profile = read_profile(profiles_dir / f"{name}.yaml")
    for other in names:
        keys = set(read_profile(profiles_dir / f"{other}.yaml").texts)
        if keys != set(profile.texts):
            raise ValueError(f"profiles {name!r} and {other!r} in {profiles_dir} must set the same keys (so each can "
                             f"switch back); only in {name}: {sorted(set(profile.texts) - keys)}, only in {other}: "
                             f"{sorted(keys - set(profile.texts))}")
    text = params_file.read_text()
    lines = text.split("\n")
    root = _parse(text, str(params_file))
    spans = []
    for key in profile.texts:
        node, leaf = _locate(root, key, str(params_file))
        line, col = node.lc.key(leaf)
        spans.append((line, *_span(lines, line, col, leaf, str(params_file)), col, key))
    spans.sort()
    for (_, _, end, _, key), (line, _, _, _, inner) in zip(spans, spans[1:]):
        if line < end:
            raise ValueError(f"profile {name}: keys {key} and {inner} overlap in {params_file}; set one of them")
    changed = []
    for first, colon, end, col, key in reversed(spans):  # bottom up: the spans above keep their line numbers
        head, *rest = profile.texts[key]
        new = [lines[first][:colon] + head, *((" " * col + t) if t.strip() else "" for t in rest)]
        if new != lines[first:end]:
            changed.append(key)
        lines[first:end] = new
    result = "\n".join(lines)
    where = f"{params_file} rewritten with profile {name}"
    check = _parse(result, where)
    for key, value in profile.values.items():
        node, leaf = _locate(check, key, where)
        got = _plain(node[leaf])
        if got != value:
            raise ValueError(f"{params_file}: profile {name} key {key} reads back as {got!r}, not {value!r}; "
                             f"the file was left unchanged")
    if changed:
        atomic_write(params_file, lambda f: f.write_text(result))
    return sorted(changed)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rwkvlab.profile", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("profile", help="a profile name: profiles/<name>.yaml (demo, paper)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file rewritten in place")
    parser.add_argument("--profiles", type=Path, help="profiles folder (default: profiles/ beside the params file)")
    args = parser.parse_args(argv)
    try:
        changed = apply_profile(args.params, args.profile, args.profiles)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{args.params}: profile {args.profile}: " +
          (f"set {', '.join(changed)}" if changed else "already in place, nothing changed"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
