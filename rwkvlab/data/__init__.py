"""Datasets: a reader per published raw layout, validation, splits and the prepared cache."""

from rwkvlab.data._base import DataError, make_split
from rwkvlab.data.cache import Prepared, load_prepared, prepare
from rwkvlab.data.reader import READERS, Case, Reader, Sample, get_reader, register_reader, validate

__all__ = ["DataError", "make_split", "Prepared", "load_prepared", "prepare", "READERS", "Case", "Reader", "Sample",
           "get_reader", "register_reader", "validate"]

# Registers every reader, so READERS is complete as soon as rwkvlab.data is imported.
import rwkvlab.data.readers  # noqa: E402,F401  (after the names the reader modules import)
