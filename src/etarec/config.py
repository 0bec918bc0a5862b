"""Experiment configuration: typed, validated, loaded from YAML with `key=value` overrides.

Every section forbids unknown keys, so a typo fails loudly with the nearest valid key suggested
instead of silently training with a default.
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_serializer, model_validator

from etarec.errors import EtarecError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class EventsColumns(_Section):
    """Column mapping of a user's own events file (CSV or Parquet)."""

    user: str = "user"
    item: str = "item"
    category: str | None = None
    timestamp: str | None = "timestamp"
    order: str | None = None
    action: str | None = None
    label: str | None = None


class SynthConfig(_Section):
    """Knobs of the synthetic long-interest benchmark (`data.dataset: synth-long`, data/synth.py;
    its seed is data.seed). The defaults are the documented benchmark; see data/synth.py."""

    users: int = Field(8000, ge=10)
    interests: int = Field(4, ge=2)  # long-lived interests per user: 1 current, the others dormant
    long_len: int = Field(1024, ge=16)  # behaviours before a user's first sample: long_len x U[0.75, 1.25]
    relevant_back: int = Field(512, ge=4)  # distance (behaviours) of the dormant interests' last episode
    catalog: int = Field(10000, ge=20)  # items
    topics: int = Field(100, ge=2)  # latent topics (= categories, before the disagreement)
    category_agreement: float = Field(0.7, ge=0.0, le=1.0)  # share of items whose category is their topic
    samples_per_user: int = Field(40, ge=1)

    @model_validator(mode="after")
    def _check_sizes(self) -> "SynthConfig":
        if self.interests >= self.topics:
            raise ValueError(f"interests={self.interests} needs topics > {self.interests} (not {self.topics}): a user's "
                             "interests are distinct topics, and noise and outside candidates come from the others")
        if self.catalog < 2 * self.topics:
            raise ValueError(f"catalog={self.catalog} < 2 x topics={self.topics}: give every topic two items or more")
        if 5 * self.relevant_back > 3 * self.long_len:
            raise ValueError(
                f"relevant_back={self.relevant_back} needs long_len >= {-(-5 * self.relevant_back // 3)}: the dormant "
                "episode (relevant_back +- relevant_back/4 behaviours back) must fit in the shortest history "
                "(0.75 x long_len); raise long_len or lower relevant_back")
        return self


class DataConfig(_Section):
    # a name of the dataset registry (etarec/data/datasets.py), checked there before any data is read
    dataset: str = "ml-latest-small"
    path: str | None = None  # raw data; None -> the dataset's default location
    prepared_dir: str | None = None  # None -> prepared/<dataset>
    columns: EventsColumns = Field(default_factory=EventsColumns)  # dataset: events only
    positive_threshold: float = 4.0  # MovieLens and events with a rating action: label = rating >= this
    seed: int = 2024  # negatives and user split of the last-behaviour (MIMN) protocol; synth-long's generator
    synth: SynthConfig | None = None  # dataset synth-long only; None: the generator's defaults

    @model_serializer(mode="wrap")
    def _without_unset_synth(self, handler):
        """`synth` is left out of dumps while unset, so every other dataset's config (and with it the
        fingerprints of prepared data and the digests of recorded runs) reads as before it existed."""
        dumped = handler(self)
        if self.synth is None and isinstance(dumped, dict):
            dumped.pop("synth", None)
        return dumped


class ModelConfig(_Section):
    name: str = "eta"
    embedding_dim: int = Field(32, ge=1)  # per feature (item, category, action, time, user ...)
    long_len: int = Field(256, ge=1)  # L: behaviours in the long window
    short_len: int = Field(50, ge=0)  # S: most recent behaviours for the short-interest attention
    hash_bits: int = Field(64, ge=1)  # m
    top_k: int = Field(64, ge=1)  # k
    heads: int = Field(2, ge=1)
    attention_dim: int = Field(64, ge=1)
    attention: Literal["multihead", "din"] = "multihead"
    din_attention_units: list[int] = Field(default_factory=lambda: [64])
    use_time: bool = False  # "+time": bucketised time-gap embedding on behaviours
    # with use_time: false keeps the time gap out of multihead attention's keys (it stays in the
    # values), so which behaviours a candidate attends to is decided by what they are, not by when
    time_in_keys: bool = True
    # with use_time: where a behaviour's gap is measured from: "request" (the sample's or request's
    # time) or "last_behaviour" (the user's most recent behaviour: how long before it each behaviour
    # happened; how long the user has been away from the request is left out)
    time_origin: Literal["request", "last_behaviour"] = "request"
    # with use_time: what carries time: "behaviours" (each behaviour its gap, as above) or "user"
    # (one user feature, read by the head only: how long before the request the user's most recent
    # behaviour happened; the behaviours and so the attention carry no time)
    time_in: Literal["behaviours", "user"] = "behaviours"
    use_action: bool = False  # embed each behaviour's action (rating, click type)
    use_user_id: bool = True  # user id embedding
    use_profile: bool = True  # user profile features (gender, age, ...) where the data has them
    mlp: list[int] = Field(default_factory=lambda: [200, 80])
    activation: Literal["relu", "prelu", "dice"] = "relu"
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    hash_seed: int = 0  # seed of the fixed SimHash projection
    embedding_init_std: float | None = Field(None, gt=0)  # N(0, std) tables; None: torch's N(0, 1)
    sparse_embeddings: bool = False  # sparse gradients + SparseAdam for embedding tables (large vocabularies)
    # SDIM (sdim model only): m fixed random hash functions, read as m / tau signatures of tau bits
    sdim_hashes: int = Field(48, ge=1)
    sdim_tau: int = Field(3, ge=1, le=62)  # a signature is one int64 bucket id
    # where the embedding tables live: "dense" (every process holds them all) or "torchrec" (split
    # over the torchrun processes by TorchRec, see etarec.scale; needs pip install -e '.[scale]')
    embeddings: Literal["dense", "torchrec"] = "dense"
    # how torchrec splits each table: by rows over all processes, whole tables per process, or as
    # TorchRec's planner chooses (rows, whole tables or columns)
    sharding: Literal["row_wise", "table_wise", "planner"] = "row_wise"

    @model_serializer(mode="wrap")
    def _without_defaults_added_later(self, handler):
        """`embeddings`, `sharding`, `time_in_keys`, `time_origin` and `time_in` are left out of dumps at their
        defaults, so configs and the digests of recorded runs read as before they existed."""
        dumped = handler(self)
        if isinstance(dumped, dict):
            if self.time_in_keys:
                dumped.pop("time_in_keys", None)
            if self.time_origin == "request":
                dumped.pop("time_origin", None)
            if self.time_in == "behaviours":
                dumped.pop("time_in", None)
            if self.embeddings == "dense":
                dumped.pop("embeddings", None)
            if self.sharding == "row_wise":
                dumped.pop("sharding", None)
        return dumped

    @model_validator(mode="after")
    def _check_windows(self) -> "ModelConfig":
        if self.top_k > self.long_len:
            raise ValueError(
                f"top_k={self.top_k} > long_len={self.long_len}: retrieval cannot keep more "
                "behaviours than the window holds; lower model.top_k or raise model.long_len"
            )
        if self.short_len > self.long_len:
            raise ValueError(
                f"short_len={self.short_len} > long_len={self.long_len}: the short window is the "
                "most recent part of the long one; lower model.short_len"
            )
        if self.attention_dim % self.heads:
            raise ValueError(
                f"attention_dim={self.attention_dim} is not divisible by heads={self.heads}"
            )
        if self.sdim_hashes % self.sdim_tau:
            raise ValueError(
                f"sdim_hashes={self.sdim_hashes} is not divisible by sdim_tau={self.sdim_tau}: SDIM groups "
                "its hash functions into signatures of sdim_tau bits each"
            )
        if not self.time_in_keys and self.attention == "din":
            raise ValueError(
                "time_in_keys=false needs attention=multihead: DIN's activation unit pools its keys, "
                "so a gap kept out of the keys would leave the model altogether"
            )
        if self.time_origin != "request" and not self.use_time:
            raise ValueError(
                f"time_origin={self.time_origin} measures the time gaps, which are off: set model.use_time=true "
                "or leave time_origin at request"
            )
        if self.time_in == "user":
            if not self.use_time:
                raise ValueError("time_in=user embeds a time gap, which is off: set model.use_time=true "
                                 "or leave time_in at behaviours")
            if not self.time_in_keys or self.time_origin != "request":
                raise ValueError("time_in_keys and time_origin place the behaviours' gaps, which time_in=user "
                                 "leaves out: leave them at their defaults or set time_in=behaviours")
        return self


class TrainConfig(_Section):
    batch_size: int = Field(256, ge=1)
    eval_batch_size: int = Field(1024, ge=1)
    epochs: int = Field(3, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float | None = 10.0
    patience: int = Field(1, ge=0)  # epochs without a better valid AUC before stopping
    seed: int = 2024
    threads: int | None = None  # torch intra-op threads; None -> torch's default
    max_steps_per_epoch: int | None = Field(None, ge=1)  # cap for smoke runs
    # resumable state (state.pt) every this many steps, and after every epoch; null: after epochs only
    state_every_steps: int | None = Field(500, ge=1)
    precision: Literal["float32", "bfloat16"] = "float32"  # bfloat16: autocast in the training steps
    # training batches built this many steps ahead by a background thread (0: built in the step);
    # which batches come, and their order, do not depend on it
    prefetch: int = Field(1, ge=0)
    # several processes: each loads only its users' samples and sequences, and its part of a global
    # batch is the samples of it that it holds; None: on with sharded tables (model.embeddings:
    # torchrec), off with dense tables (DDP splits each global batch in halves instead)
    data_by_share: bool | None = None

    @model_serializer(mode="wrap")
    def _without_defaults_added_later(self, handler):
        """`precision` (while float32), `prefetch` (while 1) and `data_by_share` (while None) are
        left out of dumps, so configs and the digests of recorded runs read as before they existed."""
        dumped = handler(self)
        if isinstance(dumped, dict):
            if self.data_by_share is None:
                dumped.pop("data_by_share", None)
            if self.precision == "float32":
                dumped.pop("precision", None)
            if self.prefetch == 1:
                dumped.pop("prefetch", None)
        return dumped


class Config(_Section):
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)


def _valid_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        keys.append(prefix + name)
        for annotation in (field.annotation, *get_args(field.annotation)):  # a section, or an optional one
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                keys.extend(_valid_keys(annotation, prefix + name + "."))
    return keys


def _explain(error: ValidationError) -> str:
    first = error.errors()[0]
    key = ".".join(str(part) for part in first["loc"])
    if first["type"] == "extra_forbidden":
        nearest = difflib.get_close_matches(key, _valid_keys(Config), n=1, cutoff=0.5)
        hint = f"; did you mean '{nearest[0]}'?" if nearest else ""
        return f"unknown config key '{key}'{hint}"
    message = first["msg"].removeprefix("Value error, ")
    if key:
        return f"invalid config value for '{key}': {message}"
    return f"invalid config: {message}"


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise EtarecError(f"override '{text}' is not key=value; write e.g. --set model.top_k=32")
    key, raw = text.split("=", 1)
    return key.strip().split("."), yaml.safe_load(raw)


def build_config(raw: dict[str, Any] | None = None, overrides: list[str] = ()) -> Config:
    """Validate a raw dict (from YAML) plus `a.b=value` overrides into a Config."""
    # an empty section (`model:` with nothing under it) means "all defaults", not an error
    raw = {key: value for key, value in (raw or {}).items() if value is not None}
    for text in overrides:
        path, value = _parse_override(text)
        node = raw
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise EtarecError(f"override '{text}': '{part}' is not a section")
        node[path[-1]] = value
    try:
        return Config.model_validate(raw)
    except ValidationError as error:
        raise EtarecError(_explain(error)) from None


def read_yaml(path: str | Path, what: str, example: str) -> dict:
    """The mapping in a YAML file; a missing file, bad syntax or a non-mapping is one EtarecError.
    what: "config file", "suite file", ...; example: what to pass instead of a missing file."""
    path = Path(path)
    if not path.is_file():
        raise EtarecError(f"{what} {path} does not exist; pass {example}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise EtarecError(f"{what} {path} is not valid YAML{where}; fix its syntax") from None
    if not isinstance(raw, dict):
        raise EtarecError(f"{what} {path} must hold a mapping of keys to values")
    return raw


def load_config(path: str | Path, overrides: list[str] = ()) -> Config:
    return build_config(read_yaml(path, "config file", "an existing YAML file to --config"), overrides)


def dump_config(config: Config) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
