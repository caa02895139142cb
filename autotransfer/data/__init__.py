"""Dataset sources (folder:, builtin:), sampling and splits, image cache, device batches."""

from autotransfer.data.builtin import BuiltinInfo, list_builtins
from autotransfer.data.cache import to_array
from autotransfer.data.sampling import (
    DataSplits,
    stratified_split,
    stratified_subsample,
    unlabelled_pool,
    unseen_subset,
)
from autotransfer.data.sources import load_dataset, parse_class_selector, skipped_summary
from autotransfer.data.types import ImageDataset

__all__ = [
    "BuiltinInfo",
    "DataSplits",
    "DeviceBatches",
    "ImageDataset",
    "list_builtins",
    "load_dataset",
    "parse_class_selector",
    "skipped_summary",
    "stratified_split",
    "stratified_subsample",
    "unseen_subset",
    "unlabelled_pool",
    "to_array",
]


def __getattr__(name: str):
    # DeviceBatches needs torch; import it on first use so `autotransfer datasets` stays quick.
    if name == "DeviceBatches":
        from autotransfer.data.device import DeviceBatches

        return DeviceBatches
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
