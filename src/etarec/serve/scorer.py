"""Scorer: a trained checkpoint that answers "score these B candidates for this user".

    scorer = Scorer.load("runs/quickstart_eta")
    scores = scorer.score(History(items=[1, 50, 260], timestamps=[...]), candidates=[1196, 2571])
    scores.probabilities  # [B] float32, in candidate order; scores.warnings: what was assumed

Requests speak raw ids; the checkpoint's catalog maps them to the model's indices (unknown ids ->
the out-of-vocabulary item, with a warning). The model's own user side runs once per request
(`model.user_side(history, shared=True)`) and its candidate side over the candidates in chunks
(`model.candidate_logits`): the code that trains is the code that serves. Chunks keep every
intermediate tensor small enough to be reused from the allocator instead of page-faulted in fresh
each request. The model's item cache (ETA: every item's signature) is filled once at load.

Parallelism: `threads` worker threads take the user side and then whole chunks, each running
torch single-threaded (torch.set_num_threads(1) in each worker; torch then also gives threads
started later one thread by default, while threads already running keep theirs).
Splitting every small op over OpenMP threads instead puts a barrier in each of ~400 ops a
request; on a box shared with other jobs a descheduled thread then stalls every one of them
(measured here, L=1024, B=1024, load 6 on 2 cores: p50 151 ms with 2 OpenMP threads vs 32 ms).
"""
from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from etarec.config import Config
from etarec.errors import EtarecError
from etarec.store.catalog import Catalog
from etarec.data.batch import UserHistory
from etarec.models.base import UserSide
from etarec.store.checkpoint import CHECKPOINT_FILE, load_checkpoint

CANDIDATE_CHUNK = 128  # candidates per pass: [128, K, P] gathers stay in cache
LISTED_IDS = 10  # a warning names at most this many ids
MAX_SECONDS = 10**13  # |timestamp| bound: far beyond any real time, far below int64 overflow in gaps


class BadRequest(EtarecError):
    """A request the Scorer cannot score as given: `field` names the offending part."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass
class History:
    """A user's behaviours, oldest first. Timestamps: Unix seconds; actions: raw values (e.g. ratings)."""

    items: Sequence[int | str] = ()
    timestamps: Sequence[int] | None = None
    actions: Sequence[float] | None = None


@dataclass
class Scores:
    probabilities: np.ndarray  # [B] float32, in candidate order
    warnings: list[str] = field(default_factory=list)


def _seconds(field: str, values) -> np.ndarray:
    """Unix seconds -> int64, refusing what is not a time (a year beyond 10^11 is no timestamp)."""
    try:
        seconds = np.asarray(values, dtype=np.int64)
    except (OverflowError, TypeError, ValueError):
        seconds = None
    if seconds is None or np.any(np.abs(seconds) > MAX_SECONDS):
        raise BadRequest(field, f"expected Unix seconds (integers within +-{MAX_SECONDS})")
    return seconds


def _listed(ids: list) -> str:
    more = f" and {len(ids) - LISTED_IDS} more" if len(ids) > LISTED_IDS else ""
    return ", ".join(repr(value) for value in ids[:LISTED_IDS]) + more


class Scorer:
    def __init__(self, model: torch.nn.Module, config: Config, catalog: Catalog, version: str,
                 threads: int | None = None, device: str | torch.device = "cpu"):
        self.config = config
        self.catalog = catalog
        self.version = version
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        item_category = torch.from_numpy(catalog.item_category).to(self.device)
        self.cache = model.item_cache()  # on the model's device
        if self.cache is not None:
            with torch.inference_mode():
                self.cache.fill_catalog(item_category)
        # CPU: chunks whose intermediates stay in cache; a GPU takes all candidates in one pass
        self.chunk = CANDIDATE_CHUNK if self.device.type == "cpu" else None
        embeddings = model.embeddings
        self.uses_time = "time_gaps" in model.inputs  # on behaviours, or how long the user was away (time_in=user)
        self.uses_action, self.uses_user = embeddings.uses_action, embeddings.uses_user
        self.threads = threads or torch.get_num_threads()
        self._pool = ThreadPoolExecutor(self.threads, initializer=torch.set_num_threads, initargs=(1,),
                                        thread_name_prefix="etarec-scorer")

    @classmethod
    def load(cls, folder: str | Path, threads: int | None = None, device: str | torch.device = "cpu") -> Scorer:
        """Load a run folder's model.pt; every problem is one EtarecError naming it and the fix.
        threads: workers per request (default: torch's thread count); device: where the model,
        its item cache and every request's tensors live (probabilities come back as numpy)."""
        model, config, payload = load_checkpoint(Path(folder))
        if "catalog" not in payload:
            raise EtarecError(
                f"checkpoint {Path(folder) / CHECKPOINT_FILE} has no catalog (raw ids of items and users), "
                "so requests cannot be mapped to the model; train it again with this etarec version")
        catalog = Catalog(payload["catalog"])
        if catalog.num_items != model.embeddings.num_items:
            raise EtarecError(f"checkpoint {Path(folder) / CHECKPOINT_FILE} is inconsistent: its catalog and "
                              "its item table differ in size; train it again")
        digest = hashlib.sha256((Path(folder) / CHECKPOINT_FILE).read_bytes()).hexdigest()[:12]
        return cls(model, config, catalog, f"{config.model.name}-{digest}", threads, device)

    @property
    def model_name(self) -> str:
        return self.config.model.name

    @torch.inference_mode()
    def score(self, history: History | Sequence[int | str] = (), candidates: Sequence[int | str] = (),
              request_time: int | None = None, user: int | str | None = None) -> Scores:
        """Probabilities [B] of the candidates for a user with this history (raw ids throughout)."""
        history = history if isinstance(history, History) else History(items=history)
        warnings: list[str] = []
        if not len(candidates):
            raise BadRequest("candidates", "no candidate items; give at least one item id to score")
        user_index = self._user(user, warnings)
        columns = self._history(history, int(time.time()) if request_time is None else request_time, warnings)
        found = self.catalog.items(candidates)
        if found.unknown:
            warnings.append(f"candidates: {len(found.unknown)} unknown item id(s) scored as the out-of-vocabulary "
                            f"item: {_listed(found.unknown)}")
        device = self.device
        items = torch.from_numpy(found.index)[None, :].to(device)  # [1, B]
        categories = torch.from_numpy(self.catalog.item_category[found.index])[None, :].to(device)
        history = UserHistory(torch.tensor([user_index], device=device),
                              torch.from_numpy(self.catalog.user_profiles[[user_index]]).to(device),
                              *(column.to(device) for column in columns))
        # all torch work runs in the workers, so no thread of this process runs torch multi-threaded
        side = self._pool.submit(self._user_side, history).result()
        chunk = self.chunk or items.shape[1]
        chunks = [(side, items[:, start:start + chunk], categories[:, start:start + chunk])
                  for start in range(0, items.shape[1], chunk)]
        logits = torch.cat(list(self._pool.map(self._chunk_logits, chunks)), dim=1)  # [1, B]
        return Scores(torch.sigmoid(logits[0]).cpu().numpy(), warnings)

    # inference mode per call: it is thread-local, and these run in the workers
    @torch.inference_mode()
    def _user_side(self, history: UserHistory) -> UserSide:
        return self.model.user_side(history, shared=True, cache=self.cache)

    @torch.inference_mode()
    def _chunk_logits(self, chunk: tuple) -> torch.Tensor:
        return self.model.candidate_logits(*chunk)

    def _user(self, user, warnings: list[str]) -> int:
        if user is None:
            if self.uses_user:
                warnings.append("user: none given; scored as the unknown user")
            return 0
        index = self.catalog.user(user)
        if index is None:
            warnings.append(f"user: unknown id {user!r} scored as the unknown user")
            return 0
        return index

    def _history(self, history: History, request_time: int, warnings: list[str]) -> list[torch.Tensor]:
        """History -> [1, L] tensors (items, categories, actions, time gaps, mask) of the most recent long_len."""
        n = len(history.items)
        for name in ("timestamps", "actions"):
            values = getattr(history, name)
            if values is not None and len(values) != n:
                raise BadRequest(f"history.{name}", f"{len(values)} values for {n} history items; give one per item "
                                 "(or leave it out)")
        keep = self.config.model.long_len
        if n > keep:
            warnings.append(f"history: {n} behaviours given; the most recent {keep} were used (the model's long_len)")
        start = max(n - keep, 0)
        found = self.catalog.items(list(history.items[start:]))
        if found.unknown:
            warnings.append(f"history: {len(found.unknown)} unknown item id(s) used as the out-of-vocabulary item: "
                            f"{_listed(found.unknown)}")
        length = len(found.index)
        if history.timestamps is not None:
            timestamps = _seconds("history.timestamps", history.timestamps[start:])
            if np.any(np.diff(timestamps) < 0):
                raise BadRequest("history.timestamps", "not in time order; list the history oldest first")
            gaps = np.maximum(_seconds("request_time", [request_time]) - timestamps, 0)
        else:
            if self.uses_time and length:
                warnings.append("history.timestamps: none given; time gaps taken as 0 (this model uses them)")
            gaps = np.zeros(length, dtype=np.int64)
        if history.actions is not None:
            actions, unknown = self.catalog.actions(history.actions[start:])
            if unknown and self.uses_action:
                warnings.append(f"history.actions: values the model never saw, used as no action: {_listed(unknown)}")
        else:
            if self.uses_action and length:
                warnings.append("history.actions: none given; behaviours scored without actions (this model uses them)")
            actions = np.zeros(length, dtype=np.int64)
        columns = [found.index, self.catalog.item_category[found.index], actions, gaps, np.ones(length, dtype=bool)]
        return [torch.from_numpy(np.ascontiguousarray(column))[None, :] for column in columns]
