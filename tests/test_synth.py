"""synth-long, the long-interest benchmark with a known answer (data/synth.py): deterministic per
seed, its stated statistics hold, the Bayes AUC it reports is sklearn's AUC of the stored true
probabilities, `relevant_back` moves where the signal sits (a model-free check), and it is written
in the canonical layout that train / evaluate run on unchanged."""
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import log_loss, roc_auc_score

from etarec.cli import main
from etarec.config import SynthConfig, build_config
from etarec.data.prepare import ensure_prepared
from etarec.data.prepared import load_prepared
from etarec.data.schema import SPLITS
from etarec.data.synth import CURRENT, DORMANT, NOISE, NOISE_KIND, PAST, generate
from etarec.errors import EtarecError

SMALL = SynthConfig(users=400, long_len=512, relevant_back=128, samples_per_user=10, catalog=2000, topics=40)


@pytest.fixture(scope="module")
def small():
    return generate(SMALL, seed=11)


def test_the_same_seed_gives_the_same_dataset_and_another_seed_another(small):
    again = generate(SMALL, seed=11)
    assert again.tables.users.equals(small.tables.users) and again.tables.items.equals(small.tables.items)
    for split in SPLITS:
        assert again.tables.samples[split].equals(small.tables.samples[split])
    assert again.tables.synth == small.tables.synth
    other = generate(SMALL, seed=12)
    assert not other.tables.users.equals(small.tables.users)
    assert not other.tables.samples["train"]["label"].equals(small.tables.samples["train"]["label"])


def test_sequence_lengths_and_sample_positions_are_as_stated(small):
    lengths = np.diff(small.offsets)
    assert ((small.first_sample >= 0.75 * SMALL.long_len - 1) & (small.first_sample <= 1.25 * SMALL.long_len + 1)).all()
    assert np.array_equal(lengths, small.first_sample + SMALL.samples_per_user - 1)
    stats = small.tables.synth["stats"]["behaviours_before_first_sample"]
    assert stats["mean"] == pytest.approx(small.first_sample.mean()) and abs(stats["mean"] - SMALL.long_len) < 20
    samples = {split: frame for split, frame in small.tables.samples.items()}
    assert sum(len(f) for f in samples.values()) == SMALL.users * SMALL.samples_per_user
    users = {split: set(f["user"]) for split, f in samples.items()}
    assert not users["train"] & users["test"] and not users["train"] & users["valid"] and not users["valid"] & users["test"]
    assert len(users["test"]) == len(users["valid"]) == 40
    for frame in samples.values():  # sample i of a user sits at first_sample + i, after every behaviour of its history
        user = frame["user"].to_numpy() - 1
        offset = frame["position"].to_numpy() - small.first_sample[user]
        assert offset.min() == 0 and offset.max() == SMALL.samples_per_user - 1
        last_time = small.tables.users["timestamp"].combine_chunks().values.to_numpy()[
            small.offsets[user] + frame["position"].to_numpy() - 1]
        assert (frame["timestamp"].to_numpy() > last_time).all()


def test_the_interest_mix_is_as_stated(small):
    """Noise at its share; the current interest alone in the last R - h behaviours before the first
    sample, the dormant interests alone (besides noise) in the episode; the past holds all."""
    kind, interest = small.kind, small.interest
    user = np.repeat(np.arange(SMALL.users), np.diff(small.offsets))
    distance = small.first_sample[user] - (np.arange(len(kind)) - small.offsets[user])
    back, half = SMALL.relevant_back, SMALL.relevant_back // 4
    assert np.mean(kind == NOISE_KIND) == pytest.approx(NOISE, abs=0.01)
    real = kind != NOISE_KIND
    recent, episode, past = distance < back - half, (distance >= back - half) & (distance < back + half), distance >= back + half
    assert set(kind[real & recent]) == {CURRENT} and set(interest[real & recent]) == {0}
    assert set(kind[real & episode]) == {DORMANT} and set(interest[real & episode]) == set(range(1, SMALL.interests))
    assert set(kind[real & past]) == {PAST} and set(interest[real & past]) == set(range(SMALL.interests))
    assert (interest[~real] == -1).all()
    # a behaviour's item is of its interest's topic; noise is of a topic outside the user's interests
    topic = small.item_topic[small.item]
    assert np.array_equal(topic[real], small.interests[user[real], interest[real]])
    assert not (topic[~real][:, None] == small.interests[user[~real]]).any()
    shares = small.tables.synth["stats"]["behaviour_share"]
    assert sum(shares.values()) == pytest.approx(1.0)
    assert small.tables.synth["stats"]["mean_burst_length"] == pytest.approx(8, rel=0.15)


@pytest.mark.parametrize("agreement", [0.0, 0.7, 1.0])
def test_categories_agree_with_the_latent_topics_as_often_as_the_knob_says(agreement):
    generated = generate(SMALL.model_copy(update={"category_agreement": agreement, "users": 20}), seed=3)
    category = generated.tables.items["category"].to_numpy()[2:] - 2
    measured = np.mean(category == generated.item_topic)
    # a disagreeing item draws its category uniformly, so it hits its own topic 1 / topics of the time
    expected = agreement + (1 - agreement) / SMALL.topics
    assert measured == pytest.approx(expected, abs=0.025)
    assert generated.tables.synth["stats"]["category_agreement"] == pytest.approx(measured)


def test_label_rate_follows_the_true_probabilities_and_dormant_candidates_are_clicked_like_current_ones(small):
    for split, frame in small.tables.samples.items():
        p, y = frame["true_probability"].to_numpy(), frame["label"].to_numpy()
        assert abs(y.mean() - p.mean()) < 4 * np.sqrt(p.mean() * (1 - p.mean()) / len(p))
        assert small.tables.synth["bayes"][split]["positive_rate"] == pytest.approx(y.mean())
    frame, kinds = small.tables.samples["train"], small.candidate_kind["train"]
    rate = [frame["label"][kinds == k].mean() for k in range(3)]  # current, dormant, outside
    assert rate[0] > 0.6 and rate[1] > 0.6 and rate[2] < 0.35
    assert np.bincount(kinds) / len(kinds) == pytest.approx([1 / 3] * 3, abs=0.03)


def test_the_bayes_auc_in_meta_is_sklearns_auc_of_the_stored_true_probabilities(tmp_path, capsys):
    out = tmp_path / "synth"
    assert main(["synth", "--out", str(out), "--users", "300", "--long-len", "256", "--relevant-back", "96",
                 "--catalog", "1000", "--topics", "20", "--seed", "5"]) == 0
    printed = capsys.readouterr().out
    meta = json.loads((out / "meta.json").read_text())
    assert meta["dataset"] == "synth-long" and meta["synth"]["seed"] == 5
    assert meta["synth"]["knobs"]["users"] == 300 and meta["synth"]["dormant_episode_distance"] == [72, 120]
    for split in SPLITS:
        table = pq.read_table(out / "samples" / f"{split}.parquet").to_pandas()
        bayes = meta["synth"]["bayes"][split]
        assert bayes["auc"] == pytest.approx(roc_auc_score(table["label"], table["true_probability"]), abs=1e-12)
        assert bayes["logloss"] == pytest.approx(log_loss(table["label"], table["true_probability"]), rel=1e-9)
        assert bayes["samples"] == meta["splits"][split]["samples"] == len(table)
        assert f"{split} AUC {bayes['auc']:.4f}" in printed
    assert 0.75 < meta["synth"]["bayes"]["test"]["auc"] < 0.95
    assert "Bayes-optimal" in printed and "--set data.synth.users=300" in printed
    data = load_prepared(out)  # the canonical layout
    assert data.meta["num_items"] == 1002 and data.meta["num_categories"] == 22


def test_a_bayes_auc_equals_a_direct_computation_on_a_tiny_case():
    tiny = generate(SynthConfig(users=10, long_len=32, relevant_back=8, samples_per_user=3, catalog=60, topics=6), seed=1)
    for split, frame in tiny.tables.samples.items():
        y, p = frame["label"].to_numpy(), frame["true_probability"].to_numpy()
        pairs = [(a, b) for a in np.flatnonzero(y == 1) for b in np.flatnonzero(y == 0)]
        direct = np.mean([1.0 if p[a] > p[b] else 0.5 if p[a] == p[b] else 0.0 for a, b in pairs]) if pairs else None
        got = tiny.tables.synth["bayes"][split]["auc"]
        assert (got is None and direct is None) or got == pytest.approx(direct, abs=1e-12)


def _band_similarity(generated, frame, near: int, far: int) -> np.ndarray:
    """Per sample: max cosine (latent) between the candidate and its behaviours near..far-1 back."""
    user, position = frame["user"].to_numpy() - 1, frame["position"].to_numpy()
    candidate = generated.latent[frame["item"].to_numpy() - 2]
    best = np.full(len(frame), -1.0)
    for d in range(near, far):
        index = generated.offsets[user] + np.maximum(position - d, 0)
        similarity = np.einsum("nd,nd->n", candidate, generated.latent[generated.item[index]])
        best = np.where(position - d >= 0, np.maximum(best, similarity), best)
    return best


def test_relevant_back_moves_where_the_signal_sits():
    """Model-free: among samples whose candidate is unlike every behaviour of the short window
    (the last 50), the label follows the candidate's similarity to the behaviours relevant_back
    back, and not to those of the same distance when relevant_back puts them in the current phase."""
    correlations = {}
    for back in (128, 384):
        generated = generate(SynthConfig(users=600, long_len=768, relevant_back=back, samples_per_user=8,
                                         catalog=2000, topics=40), seed=7)
        frame = generated.tables.samples["train"]
        label = frame["label"].to_numpy()
        unlike_recent = _band_similarity(generated, frame, 1, 50) < 0.5
        assert unlike_recent.mean() > 0.4
        for near, far in [(1, 50), (96, 160), (288, 480)]:
            similarity = _band_similarity(generated, frame, near, far)
            correlations[back, near] = np.corrcoef(label[unlike_recent], similarity[unlike_recent])[0, 1]
    # relevant_back 128: the episode sits 96..160 back; 384: 288..480 back
    assert correlations[128, 96] > 0.4 and correlations[384, 288] > 0.4
    assert abs(correlations[384, 96]) < 0.1  # the same band is current-interest-only there
    assert abs(correlations[128, 1]) < 0.1 and abs(correlations[384, 1]) < 0.1


def test_bad_knobs_are_one_line(capsys):
    assert main(["synth", "--out", "/tmp/never-written", "--relevant-back", "900"]) == 1
    assert "relevant_back=900 needs long_len >= 1500" in capsys.readouterr().err
    with pytest.raises(EtarecError, match="unknown config key 'data.synth.user'; did you mean 'data.synth.users'"):
        build_config({}, ["data.synth.user=3"])
    with pytest.raises(EtarecError, match="interests=5 needs topics > 5"):
        build_config({}, ["data.synth.interests=5", "data.synth.topics=4", "data.synth.catalog=100"])


@pytest.mark.slow
def test_train_and_evaluate_run_on_it_unchanged_and_a_changed_knob_prepares_again(tmp_path, capsys):
    prepared = tmp_path / "prepared"
    sets = [f"data.prepared_dir={prepared}", "data.dataset=synth-long", "data.synth.users=200", "data.synth.long_len=256",
            "data.synth.relevant_back=96", "data.synth.catalog=1000", "data.synth.topics=20",
            "model.long_len=256", "model.short_len=16", "model.top_k=16", "model.hash_bits=16", "model.use_time=true",
            "model.use_action=false", "train.epochs=1", "train.max_steps_per_epoch=5", "train.batch_size=64"]
    args = ["train", "--config", "configs/quickstart_eta.yaml", "--out", str(tmp_path / "eta"), "--no-progress"]
    assert main(args + [item for s in sets for item in ("--set", s)]) == 0
    metrics = json.loads((tmp_path / "eta" / "metrics.json").read_text())
    assert metrics["dataset"] == "synth-long" and 0.0 < metrics["test"]["auc"] < 1.0
    assert sum(b["samples"] for b in metrics["test"]["by_length"]["buckets"]) == 20 * 40  # 20 test users x 40 samples
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(tmp_path / "eta"), "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)["auc"] == pytest.approx(metrics["test"]["auc"], abs=1e-9)
    # the knobs are part of the data config: another value is another dataset, never a silent reuse
    lines = []
    config = build_config({}, [s for s in sets if not s.startswith("data.synth.users")] + ["data.synth.users=150"])
    data = ensure_prepared(config.data, log=lines.append)
    assert any("prepared from other inputs" in line for line in lines)
    assert data.meta["synth"]["knobs"]["users"] == 150
