"""Streaming past the loader (issue 20): evaluation of a fine-tuned model, embedding, the k-NN probe,
the data summary and the jet observables read a split in bounded blocks, so their peak memory does not
grow with the split.

Two datasets of real Pythia jets, one 4x the other (rotated copies, physfm.data.replicate), in shards
of 250 events; the peak of numpy/Python allocations (tracemalloc) of each stage on the large one stays
within 25 % (plus what its output itself needs) of the small one's, while reading the whole split
into memory (load_arrays) grows about 4x under the same measure.
"""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from physfm.data.convert import convert
from physfm.data.dataset import open_dataset
from physfm.data.loader import iter_arrays, load_arrays, open_split
from physfm.data.replicate import rotated_copies

SMALL, LARGE = 2000, 8000
LABELS = ["label_QCD", "label_Tbqq", "label_Wqq", "label_Zqq"]
MAX_LEN, D = 64, 16


@pytest.fixture(scope="module")
def datasets(jet_files: list[Path], tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    root = tmp_path_factory.mktemp("streaming")
    out = {}
    for n in (SMALL, LARGE):
        files = rotated_copies(jet_files, root / f"raw_{n}", n, per_file=2000, seed=5)
        out[n] = root / f"data_{n}"
        convert("jetclass", files, out[n], shard_events=250, reader_options={"labels": LABELS}, progress=False)
    return out


def _peak(fn: Callable[[], Any]) -> int:
    """Peak bytes of Python and numpy allocations while ``fn`` runs (what it returns is dropped first)."""
    gc.collect()
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _flat(stage: str, small: int, large: int, output_bytes: int = 0) -> None:
    bound = 1.25 * small + output_bytes
    assert large <= bound, f"{stage}: peak {large / 1e6:.1f} MB on {LARGE} events vs {small / 1e6:.1f} MB on {SMALL}"


def test_reading_a_whole_split_grows_with_it_under_this_measure(datasets: dict[int, Path]) -> None:
    small, large = (_peak(lambda n=n: load_arrays(datasets[n], "train", max_len=MAX_LEN)) for n in (SMALL, LARGE))
    assert large > 3 * small  # the measure sees a split read into memory


def test_blocks_cover_the_split_in_order(datasets: dict[int, Path]) -> None:
    ds = open_dataset(datasets[SMALL])
    whole = load_arrays(ds, "train", max_len=MAX_LEN)
    parts = list(iter_arrays(ds, "train", max_len=MAX_LEN, block_events=300))
    assert max(len(p["label"]) for p in parts) <= 300
    for key in ("x", "mask", "label", "event_key"):
        np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), whole[key])
    split = open_split(ds, "train")
    some = np.array([3, 4, 5, 700, 1200, 1201])
    picked = np.concatenate([b.event_key for b in split.blocks(block_events=2, indices=some)])
    np.testing.assert_array_equal(picked, whole["event_key"][some])
    np.testing.assert_array_equal(np.concatenate([b.label for b in split.blocks(stop=777)]), whole["label"][:777])


def test_rechunk_regroups_blocks_into_whole_batches() -> None:
    from physfm.data.loader import rechunk

    sizes = [3, 0, 1, 7, 2, 9, 1]
    start = np.cumsum([0, *sizes])
    blocks = [
        {"a": np.arange(a, b), "b": np.arange(2 * a, 2 * b).reshape(-1, 2)}
        for a, b in zip(start[:-1], start[1:], strict=True)
    ]
    chunks = list(rechunk(blocks, 4))
    assert [len(c["a"]) for c in chunks] == [4, 4, 4, 4, 4, 3]
    np.testing.assert_array_equal(np.concatenate([c["a"] for c in chunks]), np.arange(start[-1]))
    np.testing.assert_array_equal(np.concatenate([c["b"] for c in chunks]), np.arange(2 * start[-1]).reshape(-1, 2))
    assert list(rechunk([], 4)) == []
    with pytest.raises(ValueError, match=">= 1"):
        list(rechunk(blocks, 0))


def test_embedding_and_knn_memory_is_flat_in_the_split_size(
    datasets: dict[int, Path], tmp_path: Path, one_torch_thread: None
) -> None:
    import torch

    from physfm.evaluate.evaluate import embed_split
    from physfm.evaluate.search import knn_accuracy, open_index, write_embeddings
    from physfm.models.backbone import Backbone, BackboneConfig

    names = open_dataset(datasets[SMALL]).feature_names("particle")
    torch.manual_seed(0)
    config = BackboneConfig(n_features=len(names), d_model=D, n_layers=1, n_heads=2, max_len=MAX_LEN)
    model = Backbone(config).eval()
    bmeta = {
        "features": names,
        "max_len": MAX_LEN,
        "config": {"vocab_size": 0},
        "objective": "mpm",
        "norm": {"mean": [0.0] * len(names), "std": [100.0] * len(names)},
    }
    peaks, knn = {}, {}
    for n in (SMALL, LARGE):
        with torch.no_grad():
            peaks[n] = _peak(lambda n=n: embed_split(model, bmeta, datasets[n], "train", device="cpu"))
            for split in ("train", "test"):
                emb, labels, keys, meta = embed_split(model, bmeta, datasets[n], split, device="cpu")
                write_embeddings(tmp_path / f"{n}_{split}", emb, labels, keys, meta, kind="flat")
        ref, queries = open_index(tmp_path / f"{n}_train"), open_index(tmp_path / f"{n}_test")
        knn[n] = _peak(lambda ref=ref, q=queries: knn_accuracy(ref, q.embeddings, q.labels, k=5))
        assert 0.0 <= knn_accuracy(ref, queries.embeddings, queries.labels, k=5) <= 1.0
    per_event = D * 4 * 2 + 16  # the returned embeddings (and their concatenation), labels and keys
    n_train = {n: open_dataset(datasets[n]).n_events["train"] for n in (SMALL, LARGE)}
    _flat("embed", peaks[SMALL], peaks[LARGE], per_event * (n_train[LARGE] - n_train[SMALL]))
    _flat("k-NN probe", knn[SMALL], knn[LARGE], 2_000_000)  # the faiss search is outside tracemalloc


def test_evaluation_memory_is_flat_in_the_split_size(
    datasets: dict[int, Path], tmp_path: Path, one_torch_thread: None
) -> None:
    """``evaluate_model`` keeps only the per-event outputs, labels and keys; the whole-split path it
    replaced (every event's padded inputs at once, task.inputs) grows past the same bound."""
    import torch

    from physfm.evaluate.evaluate import evaluate_model
    from physfm.finetune.model import batched, load_model
    from physfm.finetune.train import FinetuneConfig, finetune

    model_dir = tmp_path / "model"
    cfg = FinetuneConfig(mode="scratch", labels="40", seed=1, max_steps=2, eval_every=2, batch_size=8, device="cpu")
    arch = {"d_model": D, "n_layers": 1, "n_heads": 2, "max_len": MAX_LEN}
    finetune(datasets[SMALL], model_dir, cfg, arch=arch, progress=False, task="classification")
    model, task, meta = load_model(model_dir)

    def whole(n: int) -> None:  # the path before streaming: the split's inputs in memory, one model call
        inp = task.inputs(open_dataset(datasets[n]), "train", meta["backbone"], None)
        batched(model, inp["x"], inp["mask"], meta["backbone"], 256, torch.device("cpu"))

    streamed, before = {}, {}
    for n in (SMALL, LARGE):
        with torch.no_grad():
            streamed[n] = _peak(
                lambda n=n: evaluate_model(model_dir, datasets[n], "train", n_bootstrap=3, block_events=512)
            )
            before[n] = _peak(lambda n=n: whole(n))
    # kept per event: logits, probabilities (float32 and the softmax's float32 copy), label, key, each
    # concatenated once; the bootstrap's index and resampled arrays
    per_event = 4 * 4 * 4 + 8 * 2 * 2 + 4 * 4 * 2 + 8 * 4
    n_train = {n: open_dataset(datasets[n]).n_events["train"] for n in (SMALL, LARGE)}
    output_bytes = per_event * (n_train[LARGE] - n_train[SMALL])
    _flat("evaluate", streamed[SMALL], streamed[LARGE], output_bytes)
    assert before[LARGE] > 1.25 * before[SMALL] + output_bytes  # the same check fails the whole-split path
    assert before[LARGE] > 2 * streamed[LARGE]


@pytest.mark.slow
def test_summary_and_observables_memory_is_flat_in_the_split_size(datasets: dict[int, Path], tmp_path: Path) -> None:
    from physfm.baselines.observables import write_observables
    from physfm.data.summary import summarize

    summary, observables = {}, {}
    for n in (SMALL, LARGE):
        summary[n] = _peak(lambda n=n: summarize(datasets[n], tmp_path / f"summary_{n}", max_events=10**9))
        observables[n] = _peak(
            lambda n=n: write_observables(datasets[n], tmp_path / f"obs_{n}", splits=("test",), progress=False)
        )
    _flat("summary", summary[SMALL], summary[LARGE])
    _flat("observables", observables[SMALL], observables[LARGE])
