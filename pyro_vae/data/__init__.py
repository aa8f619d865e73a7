"""Data: sources (``readers``, ``sources``), preparation (``preparation``), the prepared
splits that training and evaluation read (``dataset``), and their moments
(``statistics``); see each module."""

from .dataset import Dataset, Preprocessing, StreamedSplit, binarize, split_chunks
from .preparation import (check_support, divides_levels, draw_splits, labelled_rows, largest_level, load_data,
                          memory_budget, prepare)
from .readers import DATASETS, FILE_KINDS, SPLITS, RawData, encode_labels, integer_levels, read_source
from .sources import ArrayRows, NpyRows, RowSource

__all__ = [
    "DATASETS", "FILE_KINDS", "SPLITS", "ArrayRows", "Dataset", "NpyRows", "Preprocessing", "RawData", "RowSource",
    "StreamedSplit", "binarize", "split_chunks", "check_support", "divides_levels", "draw_splits", "encode_labels", "integer_levels", "labelled_rows",
    "largest_level", "load_data", "memory_budget", "prepare", "read_source",
]
