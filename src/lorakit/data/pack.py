"""Packing: several short examples concatenated into one sequence of at most ``max_length`` tokens.

Examples are kept whole and placed in order, a new pack starting when the next one would not fit. Labels keep
their -100 masks, so the loss is the same sum over the same response tokens; attention inside a pack spans the
examples before it in that pack (no block-diagonal mask), as in common "naive" packing. It cuts padding and so
step time when examples are much shorter than ``max_length``.
"""

from __future__ import annotations

from lorakit.data.encode import Encoded, EncodedData


def pack(data: EncodedData, max_length: int) -> EncodedData:
    """A new :class:`EncodedData` whose examples are packs of the original ones, in order."""
    packs: list[Encoded] = []
    current = Encoded([], [])
    for example in data.examples:
        if current.input_ids and len(current.input_ids) + len(example.input_ids) > max_length:
            packs.append(current)
            current = Encoded([], [])
        current.input_ids.extend(example.input_ids)
        current.labels.extend(example.labels)
    if current.input_ids:
        packs.append(current)
    return EncodedData(packs, data.source, data.sha256, data.truncated, list(data.skipped), data.rows)
