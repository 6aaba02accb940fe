"""One module per published raw layout; importing this package registers every reader, and :func:`get_reader`
looks a dataset's reader up among them.

The lookup lives here, not in :mod:`rwkvlab.data`: only what reads raw data (the prepare stage, ``python -m
rwkvlab.data``) imports the readers, so the stages that train and evaluate on a prepared cache do not depend on
them (rwkvlab.pipeline derives each stage's dependencies from its imports).
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from pathlib import Path
from typing import Any

from rwkvlab.data._base import DataError
from rwkvlab.data.reader import PREPARE_OPTIONS, READERS, Reader

__all__ = ["READERS", "get_reader"]

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")


def get_reader(name: str, root: Path, **options: Any) -> Reader:
    """The reader of dataset ``name`` over ``root``, built from ``prepare.options.<name>``.

    Args:
        name: a registered reader, or the user's own dataset name when ``options`` has ``reader``.
        root: the raw folder.
        options: ``reader`` (a registered reader for ``name``, e.g. ``folder``; the reader then takes
            ``name`` as its dataset name), ``skip_invalid`` (read by the prepare stage, ignored here) and
            the reader's constructor arguments.

    Raises:
        DataError: for an unknown dataset or reader, or an option the reader does not take.
    """
    where = f"prepare.options.{name}"
    given = options.pop("reader", None)
    options.pop("skip_invalid", None)
    kind = given or name
    if kind not in READERS:
        known = ", ".join(sorted(READERS))
        if given:
            raise DataError(f"{where}.reader: unknown reader {given!r}; known: {known}")
        raise DataError(f"unknown dataset {name!r}; known: {known}; for your own data set "
                        f"{where}.reader (e.g. reader: folder)")
    cls = READERS[kind]
    accepted = list(inspect.signature(cls.__init__).parameters)[2:]  # after self and root
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise DataError(f"{where}: unknown option(s) {unknown} for reader {kind!r}; known: "
                        f"{sorted(accepted + list(PREPARE_OPTIONS))}")
    try:
        reader = cls(root, **options)
    except DataError as err:
        raise DataError(f"{where}: {err}") from err
    if kind != name:
        reader.name = name  # the user's dataset name goes into messages and the cache
    return reader
