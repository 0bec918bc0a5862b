"""synth-long: a seeded long-interest benchmark whose answer is known (`data.dataset: synth-long`).

Public long-sequence data is scarce and short (ML-1M: 199 real behaviours in a 256-window on
average); this generator makes histories where what decides a click sits far beyond the short
window, and it knows every sample's true click probability, so the ceiling is on the table.

The model, in the order it is drawn (all from `data.seed`, knobs in `data.synth`, config.SynthConfig):

1. **Items** in a latent space: `topics` topic centres, random unit vectors in R^16. The `catalog`
   items are dealt evenly over the topics; an item's latent vector is its topic centre plus
   N(0, ITEM_SPREAD^2 / 16) per coordinate, normalised (cosine to its centre ~0.86, to another
   item of its topic ~0.74, to other topics ~0 +- 0.25). An item's **category** is its topic with
   probability `category_agreement`, else a uniformly drawn topic: categories only partly agree
   with the latent interests. Each item has an appeal, N(0, APPEAL_STD^2).
2. **Users** (`users`) have `interests` long-lived interests, distinct topics: interest 0 is the
   *current* one, the others are *dormant*. An interest's centre is its topic centre plus a
   user-specific offset (scale INTEREST_SPREAD) that **drifts**: a new random anchor every
   DRIFT_EVERY behaviours, linearly interpolated in between.
3. **Behaviours** come in **bursts** (geometric lengths, mean BURST_MEAN; cut where the regions
   below change). A burst is NOISE of the time a random topic outside the user's interests (items
   uniform in it); otherwise one interest's, its items drawn from the interest's topic with
   P(item) ~ exp(SHARPNESS * cos(item, the interest's centre at that moment)). Which interest
   depends on the burst's distance d (in behaviours) before the user's first sample, with
   R = `relevant_back` and the episode half-width h = R // 4:
       d < R - h          the current interest only (the recent past and everything after it)
       R - h <= d < R + h the dormant interests (uniformly per burst): their last episode
       d >= R + h         all interests, at user weights ~ Dirichlet(1) (the distant past)
   So a dormant interest shows up nowhere in the last R - h behaviours: only a model that looks
   that far back can know it. A user has long_len x U[0.75, 1.25] behaviours before the first
   sample (`long_len`), then `samples_per_user` samples at consecutive positions (sample i's
   history is the first n + i behaviours; the current interest goes on between them).
   Timestamps: Exp(120 s) gaps inside a burst, Exp(12 h) between bursts (>= 2 s), so a sample,
   timed 1 s after its last behaviour, never ties one.
4. **Candidates and clicks**: a sample's candidate is an item, uniform in a topic drawn as: the
   current interest's (1/3), a dormant interest's (1/3), or a topic outside the interests (1/3).
   Its true click probability is
       p = sigmoid(CLICK_SCALE * (s - CLICK_CENTRE) + appeal),  s = max_k cos(candidate, c_k)
   over the user's interests k, c_k the centre of interest k at its latest activity: the current
   interest's at the sample, a dormant one's at the end of its episode (R - h back). The label is
   Bernoulli(p). A dormant-interest candidate is a likely click that nothing in the last R - h
   behaviours announces.
5. Users are split 80/10/10 into train/valid/test (a seeded permutation, as the MIMN protocol).

Stored in the canonical layout (writer.py) like every dataset, samples pointing into the users'
sequences; the samples files also hold `true_probability` (models never read it). meta.json's
`synth` section gives the knobs, the constants, the measured statistics and, per split, the
**Bayes-optimal** AUC and logloss: those of the true probabilities, the ceiling no model beats in
expectation (one that knows the latent centres; a model sees only their behaviours, so its
reachable ceiling is somewhat lower). No actions (every action id 0); no user features.

`etarec synth --out DIR [--users ...]` and `etarec prepare --dataset synth-long` (knobs under
`data.synth` in the config) write it; `generate(knobs, seed)` returns it in memory with the latent
state for tests.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from etarec.config import DataConfig, SynthConfig
from etarec.data.schema import FIRST_ITEM_ID, SPLITS
from etarec.data.writer import Tables, items_table, users_table

NAME = "synth-long"
DIM = 16  # latent dimensions
ITEM_SPREAD = 0.6  # an item: normalise(topic centre + ITEM_SPREAD * N(0, I / DIM))
INTEREST_SPREAD = 0.5  # a user's interest centre: normalise(topic centre + offset), offset of this scale
DRIFT_EVERY = 256  # behaviours between the drift anchors of an interest's offset
SHARPNESS = 8.0  # a burst's items: P(item) ~ exp(SHARPNESS * cos(item, interest centre)) within the topic
BURST_MEAN = 8  # mean burst length (geometric)
NOISE = 0.15  # share of bursts from a random topic outside the user's interests
CLICK_SCALE = 6.0  # true logit = CLICK_SCALE * (s - CLICK_CENTRE) + appeal
CLICK_CENTRE = 0.55
APPEAL_STD = 0.5
CANDIDATE_SHARES = (1 / 3, 1 / 3, 1 / 3)  # current interest's topic, a dormant interest's, an outside topic
IN_BURST_GAP_S, BETWEEN_BURSTS_GAP_S, MIN_GAP_S = 120.0, 43_200.0, 2
START_TIME = 1_600_000_000
CHUNK = 8192  # bursts per block when drawing items

# what each behaviour is (Generated.kind)
NOISE_KIND, CURRENT, DORMANT, PAST = 0, 1, 2, 3
KIND_NAMES = {NOISE_KIND: "noise", CURRENT: "current", DORMANT: "dormant episode", PAST: "distant past"}
CANDIDATE_NAMES = ("current", "dormant", "outside")


@dataclass
class SynthTables(Tables):
    """The dataset as every prepared dataset (Tables) plus the generator's section of meta.json."""

    synth: dict = field(default_factory=dict)

    def meta(self, fingerprint: dict, inputs: list[dict]) -> dict:
        return {**super().meta(fingerprint, inputs), "synth": self.synth}


@dataclass
class Generated:
    """The dataset and the latent state behind it (for tests and analysis).

    Behaviours are flat, user after user in sequence order (user u = etarec user u + 1 owns
    offsets[u]:offsets[u + 1]); items are generator indices (etarec id = index + FIRST_ITEM_ID)."""

    tables: SynthTables
    latent: np.ndarray  # [catalog, DIM] unit item vectors
    item_topic: np.ndarray  # [catalog]
    interests: np.ndarray  # [users, interests] topics; column 0 the current interest
    offsets: np.ndarray  # [users + 1] into the flat behaviours
    first_sample: np.ndarray  # [users] behaviours before the user's first sample
    item: np.ndarray  # [E] behaviours' item indices
    kind: np.ndarray  # [E] NOISE_KIND / CURRENT / DORMANT / PAST
    interest: np.ndarray  # [E] the interest (column of `interests`) a behaviour came from, -1 for noise
    candidate_kind: dict[str, np.ndarray]  # per split [N]: 0 current, 1 dormant, 2 outside


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Mann-Whitney AUC with average ranks for ties (as sklearn); nan with one class."""
    labels = np.asarray(labels) > 0.5
    ranks = pd.Series(np.asarray(scores, dtype=np.float64)).rank(method="average").to_numpy()
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def bayes_logloss(labels: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-7, 1 - 1e-7)
    y = np.asarray(labels, dtype=np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def _outside_topics(rng: np.random.Generator, interests: np.ndarray, topics: int) -> np.ndarray:
    """One topic per row of interests [N, K], uniform among the topics not in the row."""
    k = interests.shape[1]
    draw = rng.integers(0, topics - k, len(interests)) if topics > k else np.zeros(len(interests), np.int64)
    for taken in np.sort(interests, axis=1).T:  # step over the row's own topics, smallest first
        draw = np.where(draw >= taken, draw + 1, draw)
    return draw


def _centres(mu: np.ndarray, anchors: np.ndarray, topic: np.ndarray, user: np.ndarray, k: np.ndarray,
             position: np.ndarray) -> np.ndarray:
    """[N, DIM] interest centres: topic centre + the drifting offset at `position`."""
    step = position / DRIFT_EVERY
    a = np.floor(step).astype(np.int64)
    frac = (step - a)[:, None]
    offset = (1 - frac) * anchors[user, k, a] + frac * anchors[user, k, a + 1]
    return _unit(mu[topic] + offset)


def generate(knobs: SynthConfig | None = None, seed: int = 2024) -> Generated:
    """Draw the whole dataset (see the module docstring); the same (knobs, seed) give the same bytes."""
    knobs = knobs or SynthConfig()
    streams = [np.random.default_rng(s) for s in np.random.SeedSequence([seed, 0x5E17]).spawn(10)]
    topics, catalog, n_users, k_int, m = knobs.topics, knobs.catalog, knobs.users, knobs.interests, knobs.samples_per_user
    back, half = knobs.relevant_back, knobs.relevant_back // 4

    # 1. items
    rng = streams[0]
    mu = _unit(rng.standard_normal((topics, DIM)))
    item_topic = rng.permutation(np.arange(catalog) % topics)
    latent = _unit(mu[item_topic] + ITEM_SPREAD * rng.standard_normal((catalog, DIM)) / np.sqrt(DIM))
    appeal = APPEAL_STD * rng.standard_normal(catalog)
    agree = rng.random(catalog) < knobs.category_agreement
    item_category = np.where(agree, item_topic, rng.integers(0, topics, catalog))
    by_topic = np.argsort(item_topic, kind="stable")
    per_topic = np.bincount(item_topic, minlength=topics)
    topic_start = np.concatenate([[0], np.cumsum(per_topic)[:-1]])
    width = int(per_topic.max())
    slot = topic_start[:, None] + np.arange(width)[None, :]  # [T, width]
    topic_items = np.where(np.arange(width)[None, :] < per_topic[:, None], by_topic[np.minimum(slot, catalog - 1)], -1)

    # 2. users
    rng = streams[1]
    interests = np.argsort(rng.random((n_users, topics)), axis=1)[:, :k_int]  # [U, K] distinct topics
    weights = rng.dirichlet(np.ones(k_int), n_users)  # [U, K] the distant past's mix
    first_sample = np.round(knobs.long_len * rng.uniform(0.75, 1.25, n_users)).astype(np.int64)
    lengths = first_sample + m - 1  # the last sample's history is the whole sequence
    anchors_count = int(lengths.max()) // DRIFT_EVERY + 2
    anchors = INTEREST_SPREAD * streams[2].standard_normal((n_users, k_int, anchors_count, DIM)) / np.sqrt(DIM)

    # 3. behaviours: regions, bursts, their interests and topics
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    user = np.repeat(np.arange(n_users), lengths)  # [E]
    position = np.arange(offsets[-1]) - offsets[user]  # [E]
    distance = first_sample[user] - position  # [E] behaviours before the first sample (<= 0: after it)
    region = np.where(distance < back - half, CURRENT, np.where(distance < back + half, DORMANT, PAST))
    rng = streams[3]
    starts = (position == 0) | (rng.random(len(user)) < 1 / BURST_MEAN)
    starts[1:] |= region[1:] != region[:-1]
    burst = np.cumsum(starts) - 1  # [E]
    first = np.flatnonzero(starts)  # [B]
    b_user, b_region, b_position = user[first], region[first], position[first]
    rng = streams[4]
    b_noise = rng.random(len(first)) < NOISE
    dormant_pick = 1 + (rng.integers(0, k_int - 1, len(first)) if k_int > 1 else 0)
    past_pick = (rng.random(len(first))[:, None] > np.cumsum(weights[b_user], axis=1)).sum(1).clip(max=k_int - 1)
    b_interest = np.select([b_region == CURRENT, b_region == DORMANT], [0, dormant_pick], past_pick)
    b_topic = np.where(b_noise, _outside_topics(rng, interests[b_user], topics), interests[b_user, b_interest])
    b_interest = np.where(b_noise, -1, b_interest)

    # items of each burst: inverse-CDF draws from the burst's distribution over its topic's items
    rng = streams[5]
    draws = rng.random(len(user))
    item = np.empty(len(user), dtype=np.int64)
    for lo in range(0, len(first), CHUNK):
        hi = min(lo + CHUNK, len(first))
        members = topic_items[b_topic[lo:hi]]  # [b, width], -1 = no item
        centre = _centres(mu, anchors, b_topic[lo:hi], b_user[lo:hi], np.maximum(b_interest[lo:hi], 0),
                          b_position[lo:hi])
        score = SHARPNESS * np.einsum("bwd,bd->bw", latent[np.maximum(members, 0)], centre)
        score = np.where(b_noise[lo:hi, None], 0.0, score)  # noise: uniform within the topic
        score = np.where(members >= 0, score - score.max(1, keepdims=True), -np.inf)
        cdf = np.cumsum(np.exp(score), axis=1)
        cdf /= cdf[:, -1:]
        e_lo, e_hi = first[lo], (first[hi] if hi < len(first) else len(user))
        local = burst[e_lo:e_hi] - lo
        pick = (cdf[local] < draws[e_lo:e_hi, None]).sum(1)
        item[e_lo:e_hi] = members[local, np.minimum(pick, per_topic[b_topic[lo:hi]][local] - 1)]
    kind = np.where(b_noise, NOISE_KIND, b_region)[burst]
    interest = b_interest[burst]

    # timestamps
    rng = streams[6]
    gaps = np.where(starts, rng.exponential(BETWEEN_BURSTS_GAP_S, len(user)), rng.exponential(IN_BURST_GAP_S, len(user)))
    gaps = MIN_GAP_S + np.floor(gaps).astype(np.int64)
    clock = np.cumsum(gaps)
    user_start = START_TIME + rng.integers(0, 10_000_000, n_users)
    timestamp = user_start[user] + clock - clock[offsets[:-1]][user]

    # 4. samples: candidates and their true click probabilities
    rng = streams[7]
    s_user = np.repeat(np.arange(n_users), m)  # [N]
    s_position = first_sample[s_user] + np.tile(np.arange(m), n_users)
    s_kind = rng.choice(3, len(s_user), p=CANDIDATE_SHARES)
    s_dormant = 1 + (rng.integers(0, k_int - 1, len(s_user)) if k_int > 1 else 0)
    s_topic = np.select([s_kind == 0, s_kind == 1],
                        [interests[s_user, 0], interests[s_user, s_dormant]], _outside_topics(rng, interests[s_user], topics))
    s_item = topic_items[s_topic, (rng.random(len(s_user)) * per_topic[s_topic]).astype(np.int64)]
    similarity = np.full(len(s_user), -np.inf)
    for k in range(k_int):  # s = max over interests of cos(candidate, centre at its latest activity)
        at = s_position if k == 0 else first_sample[s_user] - (back - half)
        centre = _centres(mu, anchors, interests[s_user, k], s_user, np.full(len(s_user), k), at)
        similarity = np.maximum(similarity, np.einsum("nd,nd->n", latent[s_item], centre))
        if k == 0:
            current_only = _click(similarity, appeal[s_item])  # what the current interest alone would say
    probability = _click(similarity, appeal[s_item])
    label = (rng.random(len(s_user)) < probability).astype(np.int8)
    s_time = timestamp[offsets[s_user] + s_position - 1] + 1

    # 5. users split 80/10/10
    order = streams[8].permutation(n_users)
    n_test = max(1, round(0.1 * n_users))
    part = np.zeros(n_users, dtype=np.int64)
    part[order[:n_test]] = 2
    part[order[n_test : 2 * n_test]] = 1
    samples, candidate_kind, bayes = {}, {}, {}
    for code, split in enumerate(SPLITS):
        rows = part[s_user] == code
        samples[split] = pd.DataFrame({
            "user": (s_user[rows] + 1).astype(np.int32), "position": s_position[rows].astype(np.int32),
            "item": (s_item[rows] + FIRST_ITEM_ID).astype(np.int32),
            "category": (item_category[s_item[rows]] + FIRST_ITEM_ID).astype(np.int32),
            "timestamp": s_time[rows].astype(np.int64), "label": label[rows],
            "true_probability": probability[rows],
        })
        candidate_kind[split] = s_kind[rows]
        bayes[split] = {"samples": int(rows.sum()), "positive_rate": float(label[rows].mean()) if rows.any() else 0.0,
                        "auc": _finite(roc_auc(label[rows], probability[rows])),
                        "logloss": bayes_logloss(label[rows], probability[rows]) if rows.any() else None,
                        # the same probabilities with the dormant interests left out (s over the current
                        # interest only): roughly what the short window can know
                        "auc_current_interest_only": _finite(roc_auc(label[rows], current_only[rows]))}

    # the canonical tables; user 0 is the unknown user (an empty sequence), items 0/1 padding/unknown
    counts = np.concatenate([[0], lengths])
    users = users_table(counts, np.array(["<unknown>"] + [f"u{u}" for u in range(n_users)]),
                        item + FIRST_ITEM_ID, item_category[item] + FIRST_ITEM_ID, timestamp, np.zeros_like(item))
    raw_items = np.array(["<pad>", "<unknown>"] + [f"i{i}" for i in range(catalog)])
    categories = np.concatenate([[0, 1], item_category + FIRST_ITEM_ID])
    names = ["<pad>", "unknown"] + [f"topic{t}" for t in range(topics)]
    shares = np.bincount(kind, minlength=4) / len(kind)
    section = {
        "generator": "etarec.data.synth (see its docstring)",
        "seed": seed,
        "knobs": knobs.model_dump(mode="json"),
        "constants": {"dim": DIM, "item_spread": ITEM_SPREAD, "interest_spread": INTEREST_SPREAD,
                      "drift_every": DRIFT_EVERY, "sharpness": SHARPNESS, "burst_mean": BURST_MEAN, "noise": NOISE,
                      "click_scale": CLICK_SCALE, "click_centre": CLICK_CENTRE, "appeal_std": APPEAL_STD,
                      "candidate_shares": dict(zip(CANDIDATE_NAMES, CANDIDATE_SHARES))},
        "dormant_episode_distance": [back - half, back + half],
        "bayes": bayes,
        "stats": {
            "behaviours_before_first_sample": {"mean": float(first_sample.mean()), "min": int(first_sample.min()),
                                               "max": int(first_sample.max())},
            "behaviour_share": {KIND_NAMES[k]: float(shares[k]) for k in KIND_NAMES},
            "mean_burst_length": float(len(user) / len(first)),
            "category_agreement": float((item_category == item_topic).mean()),
            "candidate_share": {name: float((s_kind == i).mean()) for i, name in enumerate(CANDIDATE_NAMES)},
        },
    }
    tables = SynthTables(NAME, "synthetic", users, items_table(raw_items, categories, names), samples, counts,
                         topics + FIRST_ITEM_ID, [], {}, synth=section)
    return Generated(tables, latent, item_topic, interests, offsets, first_sample, item, kind, interest, candidate_kind)


def _click(similarity: np.ndarray, appeal: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-(CLICK_SCALE * (similarity - CLICK_CENTRE) + appeal)))


def _finite(value: float) -> float | None:
    return None if np.isnan(value) else value


def read_synth(path: Path, data: DataConfig) -> SynthTables:
    """The registry's reader: `path` is this file (its hash is the dataset's input fingerprint, so
    a changed generator prepares again); the knobs are data.synth, the seed data.seed."""
    return generate(data.synth, data.seed).tables


def bayes_line(meta: dict) -> str | None:
    """One line with the generator's ceiling per split, for the prepare / synth commands (None
    for other datasets)."""
    section = meta.get("synth")
    if not isinstance(section, dict) or "bayes" not in section:
        return None
    parts = [f"{split} AUC {b['auc']:.4f} logloss {b['logloss']:.4f}" for split, b in section["bayes"].items()
             if b.get("auc") is not None]
    return f"{meta['dataset']}: Bayes-optimal (true click probability): " + "; ".join(parts)
