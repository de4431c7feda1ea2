"""Training data: load rows (JSONL, CSV, Parquet, ``datasets.Dataset``), check their format, tokenize with the
chat template, mask prompt tokens, pack, batch — and the bundled synthetic demo task."""

from lorakit.data.collate import collate
from lorakit.data.encode import EncodedData, encode_rows
from lorakit.data.formats import FORMATS, to_example
from lorakit.data.load import Row, RowSet, load_rows
from lorakit.data.pack import pack

__all__ = ["Row", "RowSet", "load_rows", "FORMATS", "to_example", "EncodedData", "encode_rows", "pack", "collate"]
