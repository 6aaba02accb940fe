"""Datasets: a reader per published raw layout, validation, splits and the prepared cache."""

from rwkvlab.data._base import DataError, make_split
# prepare (the cache's writer) is rwkvlab.data.cache.prepare: the package's name prepare is its submodule
# rwkvlab.data.prepare (prepare_dataset), which would shadow a function of that name as soon as it is imported.
from rwkvlab.data.cache import Prepared, load_prepared
from rwkvlab.data.reader import READERS, Case, Reader, Sample, get_reader, register_reader, validate

__all__ = ["DataError", "make_split", "Prepared", "load_prepared", "READERS", "Case", "Reader", "Sample",
           "get_reader", "register_reader", "validate"]

# Registers every reader, so READERS is complete as soon as rwkvlab.data is imported.
import rwkvlab.data.readers  # noqa: E402,F401  (after the names the reader modules import)
