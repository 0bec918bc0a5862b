"""The LongCTR parquet reader (FuxiCTR model_zoo/LongCTR layout) round-trips a generated dataset:
every batch equals one built by hand from the raw files."""
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from etarec.config import DataConfig
from etarec.data.batch import BatchBuilder
from etarec.data.prepare import ensure_prepared
from etarec.errors import EtarecError

LONG, SHORT = 12, 4


def write_longctr(folder, seed=0, users=7, items=30, categories=5):
    """A small dataset in the LongCTR layout; returns the raw tables. Id 0 is LongCTR's padding."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    cate_id = rng.integers(0, categories, items)  # 0: an item without a category
    cate_id[0] = 0
    item_info = pd.DataFrame({"item_index": np.arange(items), "cate_id": cate_id})
    lengths = rng.integers(0, 25, users)
    lengths[0] = 0  # a user without history
    sequences = [rng.integers(1, items, n).tolist() for n in lengths]
    splits = {}
    for split in ("train", "valid", "test"):
        n = int(rng.integers(5, 20))
        user = rng.integers(0, users, n)
        splits[split] = pd.DataFrame({"label": rng.integers(0, 2, n), "user_index": user,
                                      "item_index": rng.integers(1, items, n),
                                      "seq_len": [int(rng.integers(0, lengths[u] + 1)) for u in user]})
        pq.write_table(pa.Table.from_pandas(splits[split], preserve_index=False), folder / f"{split}.parquet")
    pq.write_table(pa.table({"full_item_seq": pa.array(sequences, type=pa.list_(pa.int64()))}),
                   folder / "user_info.parquet")
    pq.write_table(pa.Table.from_pandas(item_info, preserve_index=False), folder / "item_info.parquet")
    return item_info, sequences, splits


def reference_row(item_info, sequences, sample):
    """One sample's window, built by hand: LongCTR id x > 0 -> etarec x + 1 (etarec 1 = unknown item),
    a category c > 0 -> c + 1 and a missing one (0) -> 1 (unknown); user u -> u + 1 (0 = unknown user)."""
    history = sequences[sample.user_index][: sample.seq_len][-LONG:]
    pad = LONG - len(history)
    category = lambda item: int(item_info.cate_id[item]) + 1 if item_info.cate_id[item] > 0 else 1  # noqa: E731
    return {
        "user": sample.user_index + 1,
        "target_item": sample.item_index + 1,
        "target_category": category(sample.item_index),
        "history_items": [0] * pad + [x + 1 for x in history],
        "history_categories": [0] * pad + [category(x) for x in history],
        "history_mask": [False] * pad + [True] * len(history),
        "label": float(sample.label),
    }


def test_prepared_longctr_batches_equal_a_reference_built_from_the_raw_files(tmp_path):
    item_info, sequences, splits = write_longctr(tmp_path / "raw")
    config = DataConfig(dataset="longctr", path=str(tmp_path / "raw"), prepared_dir=str(tmp_path / "prepared"))
    data = ensure_prepared(config, log=lambda *_: None)
    builder = BatchBuilder(data, LONG, SHORT)
    for split, frame in splits.items():
        samples = data.splits[split]
        assert len(samples) == len(frame)
        batch = builder.build(samples, np.arange(len(frame)))
        for row, sample in enumerate(frame.itertuples()):
            expected = reference_row(item_info, sequences, sample)
            assert batch.user[row].item() == expected["user"]
            assert batch.target_item[row].item() == expected["target_item"]
            assert batch.target_category[row].item() == expected["target_category"]
            assert batch.history_items[row].tolist() == expected["history_items"]
            assert batch.history_categories[row].tolist() == expected["history_categories"]
            assert batch.history_mask[row].tolist() == expected["history_mask"]
            assert batch.labels[row].item() == expected["label"]
            assert (batch.history_time_gaps[row] == 0).all(), "the layout has no timestamps"
    assert data.meta["num_items"] == len(item_info) + 1
    assert data.meta["num_users"] == len(sequences) + 1


def test_longctr_seq_len_beyond_the_sequence_is_one_clear_error(tmp_path):
    _, sequences, splits = write_longctr(tmp_path / "raw")
    broken = splits["test"].copy()
    broken.loc[0, "seq_len"] = len(sequences[broken.loc[0, "user_index"]]) + 1
    pq.write_table(pa.Table.from_pandas(broken, preserve_index=False), tmp_path / "raw" / "test.parquet")
    config = DataConfig(dataset="longctr", path=str(tmp_path / "raw"), prepared_dir=str(tmp_path / "prepared"))
    with pytest.raises(EtarecError, match="seq_len points outside"):
        ensure_prepared(config, log=lambda *_: None)
