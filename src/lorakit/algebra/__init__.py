"""Adapter algebra and insight: combine adapters, inspect their spectra, compress them, merge them into a base.

Everything but :func:`export_merged` and :func:`output_kl` works on adapter files alone, without a model.
"""

from lorakit.algebra.combine import METHODS, CombineResult, combine
from lorakit.algebra.compress import CompressReport, compress, output_kl
from lorakit.algebra.export import ExportResult, export_merged
from lorakit.algebra.factors import Adapter, LowRank, load
from lorakit.algebra.spectrum import Spectrum, factor_svd, inspect, rank_for_energy

__all__ = [
    "combine",
    "METHODS",
    "CombineResult",
    "compress",
    "CompressReport",
    "output_kl",
    "export_merged",
    "ExportResult",
    "inspect",
    "Spectrum",
    "factor_svd",
    "rank_for_energy",
    "load",
    "Adapter",
    "LowRank",
]
