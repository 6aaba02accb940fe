"""Datasets: validation, splits and the prepared cache; the readers of the published raw layouts are
:mod:`rwkvlab.data.readers` (``get_reader``), imported only where raw data is read."""

from rwkvlab.data._base import DataError, make_split
# prepare (the cache's writer) is rwkvlab.data.cache.prepare: the package's name prepare is its submodule
# rwkvlab.data.prepare (prepare_dataset), which would shadow a function of that name as soon as it is imported.
from rwkvlab.data.cache import Prepared, load_prepared
from rwkvlab.data.reader import Case, Reader, Sample, register_reader, validate

__all__ = ["DataError", "make_split", "Prepared", "load_prepared", "Case", "Reader", "Sample", "register_reader",
           "validate"]
