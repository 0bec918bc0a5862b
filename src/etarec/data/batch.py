"""The typed Batch (the one contract between data and models) and its vectorised builder.

Windows are right-aligned: column L-1 is the most recent behaviour before the request, padding
(id 0, mask False) fills the left. The short window is the last S columns of the long one.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields

import numpy as np
import torch

from etarec.data.prepared import PreparedData, Samples


@dataclass
class UserHistory:
    """Who is asking and what they did before: the user side of N samples or requests.

    Shapes: N rows, L behaviours (right-aligned: column L-1 is the most recent, padding on the
    left), P profile features. A Batch gives one per sample (`Batch.user_history()`); a serving
    request is one row that many candidates share.

        UserHistory(user=[7], user_profile=[[2, 5]], items=[[0, 0, 41, 12]], categories=[[0, 0, 3, 3]],
                    actions=[[0, 0, 4, 5]], time_gaps=[[0, 0, 8600, 60]], mask=[[F, F, T, T]])
        -> user 7 watched item 41 (category 3, action 4) 8,600 s and item 12 one minute before the request
    """

    user: torch.Tensor  # [N] int64, 0 = unknown user
    user_profile: torch.Tensor  # [N, P] int64
    items: torch.Tensor  # [N, L] int64 or int32, 0 = padding
    categories: torch.Tensor  # [N, L] int64 or int32
    actions: torch.Tensor  # [N, L] int64 or int32
    time_gaps: torch.Tensor  # [N, L] int64 seconds between behaviour and request, >= 0
    mask: torch.Tensor  # [N, L] bool, True = real behaviour

    @property
    def length(self) -> int:
        return self.items.shape[1]

    def behaviour_columns(self) -> tuple[torch.Tensor, ...]:
        """(items, categories, actions, time_gaps, mask), each [N, L]: what embeds a behaviour"""
        return self.items, self.categories, self.actions, self.time_gaps, self.mask

    def window(self, length: int, pad: int = 0) -> "UserHistory":
        """The most recent `length` behaviours behind `pad` more columns of padding (left)."""
        columns = [torch.nn.functional.pad(column[:, -length:], (pad, 0)) if pad else column[:, -length:]
                   for column in self.behaviour_columns()]
        return UserHistory(self.user, self.user_profile, *columns)

    def gaps_from_last(self) -> "UserHistory":
        """The gaps measured from the most recent behaviour (column L-1) instead of the request:
        time_gaps [[0, 0, 8600, 60]] -> [[0, 0, 8540, 0]]."""
        gaps = torch.where(self.mask, self.time_gaps - self.time_gaps[:, -1:], 0)  # [N, L]
        return dataclasses.replace(self, time_gaps=gaps)

    def gather(self, index: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Behaviour columns at positions index [N, K] -> five [N, K] tensors"""
        return tuple(torch.gather(column, 1, index) for column in self.behaviour_columns())


@dataclass
class Batch:
    """B samples with their history windows. Shapes: B = batch, L = long window, P = profile features.

    Sample b asks: will user[b] (with user_profile[b]) click target_item[b] (of target_category[b]),
    given the behaviours history_*[b] before it? labels[b] is the answer (1.0 = clicked).
    """

    user: torch.Tensor  # [B] int64, 0 = unknown user
    user_profile: torch.Tensor  # [B, P] int64
    target_item: torch.Tensor  # [B] int64
    target_category: torch.Tensor  # [B] int64
    history_items: torch.Tensor  # [B, L] int32 (int64 past 2^31 ids), 0 = padding
    history_categories: torch.Tensor  # [B, L] int32 (as items)
    history_actions: torch.Tensor  # [B, L] int32 (as items); zeros when the model reads no actions
    history_time_gaps: torch.Tensor  # [B, L] int64 seconds between behaviour and request, >= 0; zeros when unread
    history_mask: torch.Tensor  # [B, L] bool, True = real behaviour
    labels: torch.Tensor  # [B] float32
    short_len: int  # S: the short window is the last S columns

    def __len__(self) -> int:
        return self.target_item.shape[0]

    @property
    def long_len(self) -> int:
        return self.history_items.shape[1]

    def user_history(self) -> UserHistory:
        """The samples' user side (views, no copies)."""
        return UserHistory(self.user, self.user_profile, self.history_items, self.history_categories,
                           self.history_actions, self.history_time_gaps, self.history_mask)

    def short(self, tensor: torch.Tensor) -> torch.Tensor:
        """The short window [B, S] of a [B, L, ...] history tensor (a view, not a copy)."""
        return tensor[:, tensor.shape[1] - self.short_len :]

    def rows(self, start: int, stop: int) -> "Batch":
        """Samples start:stop of the batch (views, no copies)."""
        return self._map(lambda tensor: tensor[start:stop])

    def to(self, device: torch.device | str) -> "Batch":
        """The batch on `device`; from pinned memory (pin_memory()) the copies do not block the host."""
        return self._map(lambda tensor: _unread_like(tensor, device) if _is_unread(tensor)
                         else tensor.to(device, non_blocking=True))

    def pin_memory(self) -> "Batch":
        """The batch in page-locked host memory (one copy), from where copies to a GPU run asynchronously."""
        return self._map(lambda tensor: tensor if _is_unread(tensor) else tensor.pin_memory())

    def _map(self, function) -> "Batch":
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        for name, value in moved.items():
            if isinstance(value, torch.Tensor):
                moved[name] = function(value)
        return Batch(**moved)


def _is_unread(tensor: torch.Tensor) -> bool:
    """A column the builder left unread: one zero seen at every position (all strides 0)."""
    return tensor.dim() > 0 and tensor.numel() > 1 and not any(tensor.stride())


def _unread_like(tensor: torch.Tensor, device) -> torch.Tensor:
    return torch.zeros((), dtype=tensor.dtype, device=device).expand(tensor.shape)


# the history columns a model may leave unread; items, categories and the mask are always built
OPTIONAL_INPUTS = frozenset({"actions", "time_gaps"})


class BatchBuilder:
    """Slices each sample's last L behaviours out of the flat per-user arrays, for many samples at once.

    inputs: the optional history columns to build (a model's `inputs`); the others come as a
    stride-0 view of zeros [B, L] (no memory, no copy), so a model without actions or time gaps
    does not pay for copying them. Windows keep the sequences' dtype (int32 ids, prepared.py):
    half the bytes of int64, and the embeddings and retrieval read them as they are."""

    def __init__(self, data: PreparedData, long_len: int, short_len: int, inputs=OPTIONAL_INPUTS):
        unknown = set(inputs) - OPTIONAL_INPUTS
        if unknown:
            raise ValueError(f"unknown batch inputs {sorted(unknown)}; choose from {sorted(OPTIONAL_INPUTS)}")
        self.data = data
        self.long_len = long_len
        self.short_len = short_len
        self.inputs = frozenset(inputs)

    def build(self, samples: Samples, index: np.ndarray) -> Batch:
        seq = self.data.sequences
        user = samples.user[index]  # [B]
        position = samples.position[index]  # [B] history = sequence[:position]
        end = seq.offsets[user] + position  # [B] flat index one past the last history event
        history_len = np.minimum(position, self.long_len)  # [B]
        # each row's window is one contiguous slice of the flat array (right-aligned, padding on
        # the left): copied slice by slice, 4x faster than numpy's fancy indexing of a strided
        # view at L = 16,384 (3 vs 13 ms per int32 column of 256 rows) and no gather for short rows;
        # the mask too is filled row by row (2x faster than comparing [B, L] positions)
        rows = list(zip(end.tolist(), history_len.tolist()))
        mask = np.zeros((len(index), self.long_len), dtype=bool)  # [B, L]
        for row, (_, length) in enumerate(rows):
            mask[row, self.long_len - length :] = True

        def window(values: np.ndarray) -> torch.Tensor:
            out = np.empty(mask.shape, dtype=values.dtype)
            for row, (stop, length) in enumerate(rows):
                out[row, : self.long_len - length] = 0
                out[row, self.long_len - length :] = values[stop - length : stop]
            return torch.from_numpy(out)

        def unread(dtype) -> torch.Tensor:
            return _unread_like(torch.empty(mask.shape, dtype=dtype, device="meta"), "cpu")

        if "time_gaps" in self.inputs:
            request_time = samples.timestamp[index]
            gaps = torch.from_numpy(np.where(mask, np.maximum(request_time[:, None] - window(seq.timestamp).numpy(), 0), 0))
        else:
            gaps = unread(torch.int64)
        return Batch(
            user=torch.from_numpy(user),
            user_profile=torch.from_numpy(self.data.profiles[user]),
            target_item=torch.from_numpy(samples.item[index]),
            target_category=torch.from_numpy(samples.category[index]),
            history_items=window(seq.item),
            history_categories=window(seq.category),
            history_actions=window(seq.action) if "actions" in self.inputs else unread(torch.int32),
            history_time_gaps=gaps,
            history_mask=torch.from_numpy(mask),
            labels=torch.from_numpy(samples.label[index]),
            short_len=self.short_len,
        )

    def batches(self, samples: Samples, batch_size: int, shuffle: bool = False, seed: int = 0, epoch: int = 0):
        """Yield Batches over a split; the order depends only on (seed, epoch) when shuffled."""
        order = epoch_order(len(samples), seed, epoch) if shuffle else np.arange(len(samples))
        for start in range(0, len(order), batch_size):
            yield self.build(samples, order[start : start + batch_size])


def epoch_order(size: int, seed: int, epoch: int) -> np.ndarray:
    """The shuffled sample order of an epoch: a function of (seed, epoch) only, so every rank of a
    distributed run, and a resumed run, computes the same one without communicating."""
    return np.random.default_rng([seed, epoch]).permutation(size)


def rank_share(index: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """Rank's contiguous part of `index` (a global batch or a whole split): the parts of all ranks
    are disjoint, cover `index` and differ in size by at most one."""
    size = len(index)
    return index[rank * size // world_size : (rank + 1) * size // world_size]
