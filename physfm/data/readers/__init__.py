"""Readers turn one raw input format into :class:`~physfm.data.readers.base.RawBlock` chunks.

Each reader knows its files' schema; the converter (:mod:`physfm.data.convert`) does the rest
(validation, event keys, splits, shards, manifest) identically for every format.
"""

from __future__ import annotations

from physfm.data.readers.base import RawBlock, Reader
from physfm.data.readers.jetclass import JetClassReader
from physfm.data.readers.kaggle import KaggleReader
from physfm.data.readers.pilarnet import PILArNetReader
from physfm.data.readers.prometheus import PrometheusReader

READERS: dict[str, type[Reader]] = {
    "jetclass": JetClassReader,
    "kaggle": KaggleReader,  # IceCube Kaggle layout (also `physfm generate icecube`)
    "prometheus": PrometheusReader,  # Prometheus simulation, graphnet parquet layout
    "pilarnet": PILArNetReader,  # LArTPC, PILArNet-M HDF5 layout (also `physfm generate lartpc`)
}

__all__ = ["READERS", "RawBlock", "Reader", "JetClassReader", "KaggleReader", "PrometheusReader", "PILArNetReader"]
