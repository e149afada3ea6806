"""Readers turn one raw input format into :class:`~physfm.data.readers.base.RawBlock` chunks.

Each reader knows its files' schema; the converter (:mod:`physfm.data.convert`) does the rest
(validation, event keys, splits, shards, manifest) identically for every format.
"""

from __future__ import annotations

from physfm.data.readers.base import RawBlock, Reader
from physfm.data.readers.jetclass import JetClassReader

READERS: dict[str, type[Reader]] = {"jetclass": JetClassReader}

__all__ = ["READERS", "RawBlock", "Reader", "JetClassReader"]
