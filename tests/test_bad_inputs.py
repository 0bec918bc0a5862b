"""Every bad input a user can give ends in one clear line on stderr and a non-zero exit (no traceback)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml

from conftest import shared_dataset
from etarec.cli import main
from etarec.config import DataConfig, EventsColumns, build_config, load_config
from etarec.data.datasets import get_dataset
from etarec.data.prepare import prepare
from etarec.data.prepared import load_prepared
from etarec.errors import EtarecError
from etarec.store.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
BUNDLED_SMALL = REPO / "data" / "ml-latest-small"
ETA_CONFIG = str(REPO / "configs" / "quickstart_eta.yaml")
DIN_CONFIG = str(REPO / "configs" / "quickstart_din.yaml")
TINY = ["--set", "train.epochs=1", "--set", "train.max_steps_per_epoch=3", "--set", "model.long_len=32",
        "--set", "model.short_len=8", "--set", "model.top_k=8", "--set", "train.eval_batch_size=4096",
        "--no-progress"]


def cli_error(capsys, argv: list[str], *words: str) -> str:
    """Run the CLI, expect a non-zero exit and exactly one stderr line holding every word."""
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    assert code != 0, f"expected a failure, got exit 0 (stderr: {err!r})"
    assert err.endswith("\n") and err.count("\n") == 1, f"stderr is not one line: {err!r}"
    assert "Traceback" not in err
    line = err.strip()
    assert line.startswith(f"etarec {argv[0]}: error: "), line
    for word in words:
        assert word.lower() in line.lower(), f"{word!r} not in {line!r}"
    return line


def copy_small(folder: Path, ratings: str | bytes | None = None) -> Path:
    """A copy of ml-latest-small whose ratings.csv is replaced by `ratings` (None: left out)."""
    folder.mkdir(parents=True)
    shutil.copy(BUNDLED_SMALL / "movies.csv", folder / "movies.csv")
    if isinstance(ratings, bytes):
        (folder / "ratings.csv").write_bytes(ratings)
    elif ratings is not None:
        (folder / "ratings.csv").write_text(ratings)
    return folder


def linked_copy(source: Path, folder: Path, replace: str, append: str) -> Path:
    """`folder` with links to every file of `source`, except `replace`: a copy with `append` added."""
    folder.mkdir()
    for file in source.iterdir():
        if file.name != replace:
            (folder / file.name).symlink_to(file)
    (folder / replace).write_bytes((source / replace).read_bytes() + append.encode("latin-1"))
    return folder


def write_yaml(path: Path, config: dict | str) -> str:
    path.write_text(config if isinstance(config, str) else yaml.safe_dump(config))
    return str(path)


# ----------------------------------------------------------------------------------------------
# data files
# ----------------------------------------------------------------------------------------------


def test_missing_data_file(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    cli_error(capsys, ["prepare", "--dataset", "ml-latest-small", "--path", str(tmp_path / "empty"),
                       "--out", str(tmp_path / "out")], "ratings.csv", "movies.csv", "lacks")
    only_movies = copy_small(tmp_path / "only_movies")
    line = cli_error(capsys, ["prepare", "--dataset", "ml-latest-small", "--path", str(only_movies),
                              "--out", str(tmp_path / "out")], "lacks ratings.csv")
    assert "movies.csv" not in line.split("lacks", 1)[1]
    assert not (tmp_path / "out").exists()


def test_missing_data_path(tmp_path, capsys):
    cli_error(capsys, ["prepare", "--dataset", "ml-1m", "--path", str(tmp_path / "nowhere"),
                       "--out", str(tmp_path / "out")], "nowhere", "does not exist")
    cli_error(capsys, ["prepare", "--dataset", "events", "--path", str(tmp_path / "events.csv"),
                       "--out", str(tmp_path / "out")], "events.csv", "does not exist")


def test_events_dataset_without_a_path(tmp_path, capsys):
    config = write_yaml(tmp_path / "c.yaml", {"data": {"dataset": "events"}})
    cli_error(capsys, ["prepare", "--config", config, "--out", str(tmp_path / "out")], "events", "data.path")


@pytest.mark.parametrize(
    "ratings,words",
    [
        ("userId,movieId,rating,timestamp\n1,31,2.5,1260759144\n1,1029,great,1260759179\n",
         ["ratings.csv", "malformed", "'rating'", "non-numeric", "'great'", "row 2"]),
        ("userId,movieId,rating,timestamp\n1,31,2.5,1260759144\nthis is, not, a, ratings, line, at all\n",
         ["ratings.csv", "malformed", "expected 4 fields"]),
        (bytes(range(256)) * 4, ["ratings.csv", "malformed"]),
        ("", ["ratings.csv", "malformed"]),
    ],
    ids=["non-numeric-rating", "garbage-line", "binary-junk", "empty-file"],
)
def test_malformed_ratings_file(tmp_path, capsys, ratings, words):
    folder = copy_small(tmp_path / "raw", ratings)
    cli_error(capsys, ["prepare", "--dataset", "ml-latest-small", "--path", str(folder),
                       "--out", str(tmp_path / "out")], *words)
    with pytest.raises(EtarecError, match="malformed"):
        prepare(DataConfig(dataset="ml-latest-small", path=str(folder)), tmp_path / "out", log=lambda *_: None)
    assert not (tmp_path / "out").exists()


def test_malformed_parquet_events(tmp_path, capsys):
    path = tmp_path / "events.parquet"
    path.write_bytes(b"PAR1" + bytes(range(200)) + b"PAR1")
    cli_error(capsys, ["prepare", "--dataset", "events", "--path", str(path), "--out", str(tmp_path / "out")],
              "events.parquet", "malformed")


def test_malformed_taobao_behaviour(tmp_path, capsys):
    path = tmp_path / "UserBehavior.csv"
    path.write_text("1,2268318,2520377,pv,1511544070\n1,2333346,2520771,like,1511561733\n")
    cli_error(capsys, ["prepare", "--dataset", "taobao", "--path", str(path), "--out", str(tmp_path / "out")],
              "unknown behavior", "'like'", "row 2", "pv")


def test_events_csv_lacking_the_mapped_item_column(tmp_path, capsys):
    path = tmp_path / "events.csv"
    path.write_text("uid,item_id,ts\n1,10,100\n1,11,101\n")
    config = write_yaml(tmp_path / "c.yaml", {"data": {"dataset": "events", "path": str(path),
                                                        "columns": {"user": "uid", "item": "iid", "timestamp": "ts"}}})
    cli_error(capsys, ["prepare", "--config", config, "--out", str(tmp_path / "out")],
              "events.csv", "lacks column", "'iid'", "item_id")
    with pytest.raises(EtarecError, match=r"lacks column\(s\) \['iid'\]"):
        prepare(DataConfig(dataset="events", path=str(path), columns=EventsColumns(user="uid", item="iid", timestamp="ts")),
                tmp_path / "out", log=lambda *_: None)


def test_ratings_without_timestamp_column(tmp_path, capsys):
    folder = copy_small(tmp_path / "raw", "userId,movieId,rating\n1,31,2.5\n")
    cli_error(capsys, ["prepare", "--dataset", "ml-latest-small", "--path", str(folder),
                       "--out", str(tmp_path / "out")], "ratings.csv", "lacks column", "'timestamp'")


def test_events_with_bad_labels_or_empty_ids(tmp_path, capsys):
    labels = tmp_path / "labels.csv"
    labels.write_text("user,item,timestamp,label\n1,10,100,1\n1,11,101,2\n")
    config = write_yaml(tmp_path / "c.yaml", {"data": {"dataset": "events", "path": str(labels),
                                                        "columns": {"label": "label"}}})
    cli_error(capsys, ["prepare", "--config", config, "--out", str(tmp_path / "out")], "'label'", "0/1")
    empty_user = tmp_path / "empty_user.csv"
    empty_user.write_text("user,item,timestamp\n1,10,100\n,11,101\n")
    cli_error(capsys, ["prepare", "--dataset", "events", "--path", str(empty_user), "--out", str(tmp_path / "out")],
              "column 'user'", "empty")


def test_ml1m_malformed_users_file(tmp_path, capsys):
    folder = linked_copy(shared_dataset("movielens-1m"), tmp_path / "ml1m", "users.dat", "x::M::1::10::48067\n")
    cli_error(capsys, ["prepare", "--dataset", "ml-1m", "--path", str(folder), "--out", str(tmp_path / "out")],
              "users.dat", "malformed", "'user_id'", "'x'")


@pytest.mark.parametrize(
    "file,line,words",
    [
        ("u.item", "garbage\n", ["u.item", "malformed", "0/1 genre flags"]),
        ("u.genre", "garbage\n", ["u.genre", "malformed", "'index'", "empty value"]),
        ("u.user", "944|old|M|technician|85711\n", ["u.user", "malformed", "'age'", "'old'"]),
        ("u.data", "1\t2\tfive\t881250949\n", ["u.data", "malformed", "'rating'", "'five'"]),
    ],
    ids=["item", "genre", "user", "data"],
)
def test_ml100k_malformed_files(tmp_path, capsys, file, line, words):
    folder = linked_copy(shared_dataset("movielens-100k"), tmp_path / "ml100k", file, line)
    cli_error(capsys, ["prepare", "--dataset", "ml-100k", "--path", str(folder), "--out", str(tmp_path / "out")], *words)


def test_corrupt_prepared_data(tmp_path, capsys):
    folder = tmp_path / "prepared"
    prepare(DataConfig(dataset="ml-latest-small"), folder, log=lambda *_: None)
    users = folder / "users.parquet"
    users.write_bytes(users.read_bytes()[:1000])
    with pytest.raises(EtarecError, match="incomplete or corrupt"):
        load_prepared(folder)
    # training on it: the prepared folder matches the config, so it is loaded and found corrupt
    cli_error(capsys, ["train", "--config", ETA_CONFIG, "--out", str(tmp_path / "run"), *TINY,
                       "--set", f"data.prepared_dir={folder}"], "incomplete or corrupt", "etarec prepare")
    (folder / "meta.json").write_text("{not json")
    with pytest.raises(EtarecError, match="meta.json is corrupt"):
        load_prepared(folder)


def test_loading_a_folder_without_prepared_data(tmp_path):
    with pytest.raises(EtarecError, match="no prepared dataset"):
        load_prepared(tmp_path)


# ----------------------------------------------------------------------------------------------
# configs
# ----------------------------------------------------------------------------------------------


def test_unknown_config_key_in_yaml(tmp_path, capsys):
    config = write_yaml(tmp_path / "typo.yaml", {"model": {"name": "eta", "top_kk": 8}})
    cli_error(capsys, ["train", "--config", config, "--out", str(tmp_path / "run")],
              "unknown config key 'model.top_kk'", "did you mean 'model.top_k'")
    with pytest.raises(EtarecError, match=r"did you mean 'model\.top_k'"):
        load_config(config)


def test_unknown_config_key_via_set(tmp_path, capsys):
    cli_error(capsys, ["train", "--config", ETA_CONFIG, "--set", "model.top_kk=8", "--out", str(tmp_path / "run")],
              "unknown config key 'model.top_kk'", "did you mean 'model.top_k'")
    cli_error(capsys, ["train", "--config", ETA_CONFIG, "--set", "trian.epochs=1", "--out", str(tmp_path / "run")],
              "unknown config key 'trian'", "did you mean 'train'")
    with pytest.raises(EtarecError, match=r"did you mean 'data\.columns\.item'"):
        build_config({}, ["data.columns.itme=iid"])


def test_unknown_config_key_in_prepare_config(tmp_path, capsys):
    config = write_yaml(tmp_path / "c.yaml", {"data": {"dataset": "events", "colums": {"item": "iid"}}})
    cli_error(capsys, ["prepare", "--config", config, "--out", str(tmp_path / "out")],
              "unknown config key 'data.colums'", "did you mean 'data.columns'")


def test_override_that_is_not_key_value(tmp_path, capsys):
    cli_error(capsys, ["train", "--config", ETA_CONFIG, "--set", "model.top_k", "--out", str(tmp_path / "run")],
              "'model.top_k'", "key=value")


@pytest.mark.parametrize(
    "overrides,words",
    [
        (["model.top_k=64", "model.long_len=32"], ["top_k=64 > long_len=32", "model.top_k"]),
        (["model.hash_bits=0"], ["'model.hash_bits'", "greater than or equal to 1"]),
        (["model.short_len=64", "model.long_len=32", "model.top_k=8"], ["short_len=64 > long_len=32", "model.short_len"]),
        (["model.heads=3"], ["attention_dim=64", "heads=3"]),
        (["train.epochs=0"], ["'train.epochs'", "greater than or equal to 1"]),
    ],
    ids=["top_k>long_len", "hash_bits=0", "short_len>long_len", "heads", "epochs=0"],
)
def test_value_out_of_range(tmp_path, capsys, overrides, words):
    argv = ["train", "--config", ETA_CONFIG, "--out", str(tmp_path / "run"), "--no-progress"]
    for text in overrides:
        argv += ["--set", text]
    cli_error(capsys, argv, "invalid config", *words)
    with pytest.raises(EtarecError, match="invalid config"):
        load_config(ETA_CONFIG, overrides)


def test_unknown_dataset_name(tmp_path, capsys):
    """Dataset names come from the registry (etarec/data/datasets.py): checked before anything is made."""
    cli_error(capsys, ["train", "--config", ETA_CONFIG, "--set", "data.dataset=movielens", "--out", str(tmp_path / "run"),
                       "--no-progress"], "invalid config", "'data.dataset'", "unknown dataset 'movielens'", "ml-1m")
    assert not (tmp_path / "run").exists()
    config = write_yaml(tmp_path / "c.yaml", {"data": {"dataset": "ml-1mm"}})
    cli_error(capsys, ["prepare", "--config", config, "--out", str(tmp_path / "out")],
              "'data.dataset'", "did you mean 'ml-1m'")
    assert not (tmp_path / "out").exists()
    with pytest.raises(EtarecError, match="unknown dataset 'taobo'; did you mean 'taobao'"):
        get_dataset("taobo")
    assert get_dataset("taobao").name == "taobao"


def test_value_out_of_range_in_yaml(tmp_path, capsys):
    config = write_yaml(tmp_path / "c.yaml", {"model": {"name": "eta", "long_len": 16, "short_len": 8, "top_k": 32}})
    cli_error(capsys, ["train", "--config", config, "--out", str(tmp_path / "run")], "top_k=32 > long_len=16")


@pytest.mark.parametrize(
    "text,words",
    [
        ("model:\n  name: eta\n  top_k: [1\n", ["not valid yaml", "line"]),
        ("model: {name: eta, top_k: 8\n", ["not valid yaml", "line 2"]),
        ("model:\n\tname: eta\n", ["not valid yaml"]),
        ("- data\n- model\n", ["must hold a mapping"]),
    ],
    ids=["unclosed-list", "unclosed-mapping", "tab", "not-a-mapping"],
)
def test_malformed_yaml_config(tmp_path, capsys, text, words):
    config = write_yaml(tmp_path / "bad.yaml", text)
    cli_error(capsys, ["train", "--config", config, "--out", str(tmp_path / "run")], "bad.yaml", *words)
    cli_error(capsys, ["prepare", "--config", config, "--out", str(tmp_path / "out")], "bad.yaml", *words)


def test_missing_config_file(tmp_path, capsys):
    missing = str(tmp_path / "nope.yaml")
    cli_error(capsys, ["train", "--config", missing, "--out", str(tmp_path / "run")], "nope.yaml", "does not exist")
    cli_error(capsys, ["prepare", "--config", missing, "--out", str(tmp_path / "out")], "nope.yaml", "does not exist")
    with pytest.raises(EtarecError, match="does not exist"):
        load_config(missing)


# ----------------------------------------------------------------------------------------------
# models and checkpoints (tiny real training runs, once per module)
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prepared_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("prepared") / "ml-latest-small"
    prepare(DataConfig(dataset="ml-latest-small"), folder, log=lambda *_: None)
    return folder


def train_tiny(config: str, out: Path, prepared: Path) -> Path:
    code = main(["train", "--config", config, "--out", str(out), *TINY, "--set", f"data.prepared_dir={prepared}"])
    assert code == 0 and (out / "model.pt").is_file() and (out / "metrics.json").is_file()
    return out


@pytest.fixture(scope="module")
def eta_run(tmp_path_factory, prepared_dir) -> Path:
    return train_tiny(ETA_CONFIG, tmp_path_factory.mktemp("runs") / "eta", prepared_dir)


@pytest.fixture(scope="module")
def din_run(tmp_path_factory, prepared_dir) -> Path:
    return train_tiny(DIN_CONFIG, tmp_path_factory.mktemp("runs") / "din", prepared_dir)


def test_unknown_model_name(tmp_path, capsys, prepared_dir):
    config = write_yaml(tmp_path / "c.yaml", {"data": {"prepared_dir": str(prepared_dir)}, "model": {"name": "etaa"}})
    line = cli_error(capsys, ["train", "--config", config, "--out", str(tmp_path / "run"), "--no-progress"],
                     "unknown model 'etaa'", "did you mean 'eta'", "available", "din", "eta")
    assert not (tmp_path / "run" / "model.pt").exists()
    assert line.count("etaa") == 1


def copy_run(run: Path, folder: Path, model_file: Path | None = None) -> Path:
    folder.mkdir()
    shutil.copy(run / "config.yaml", folder / "config.yaml")
    shutil.copy(model_file or run / "model.pt", folder / "model.pt")
    return folder


def test_truncated_checkpoint(tmp_path, capsys, eta_run):
    folder = copy_run(eta_run, tmp_path / "cut")
    data = (folder / "model.pt").read_bytes()
    (folder / "model.pt").write_bytes(data[: len(data) // 2])
    cli_error(capsys, ["evaluate", "--checkpoint", str(folder), "--no-progress"], "model.pt", "truncated or corrupt")
    with pytest.raises(EtarecError, match="truncated or corrupt"):
        load_checkpoint(folder)
    # an empty file and random bytes fail the same way
    (folder / "model.pt").write_bytes(b"")
    cli_error(capsys, ["evaluate", "--checkpoint", str(folder), "--no-progress"], "truncated or corrupt")
    (folder / "model.pt").write_bytes(bytes(range(256)) * 8)
    cli_error(capsys, ["evaluate", "--checkpoint", str(folder), "--no-progress"], "truncated or corrupt")


def test_checkpoint_of_another_model(tmp_path, capsys, eta_run, din_run):
    folder = copy_run(eta_run, tmp_path / "mixed", model_file=din_run / "model.pt")
    line = cli_error(capsys, ["evaluate", "--checkpoint", str(folder), "--no-progress"], "'din'", "'eta'", "model.pt")
    assert "different runs" in line
    with pytest.raises(EtarecError, match="'din' model"):
        load_checkpoint(folder, expected_model="eta")


def test_checkpoint_state_that_does_not_fit_its_model(tmp_path, capsys, eta_run, din_run):
    # an ETA payload whose weights are DIN's: named as an eta checkpoint, but the tensors do not fit
    payload = torch.load(eta_run / "model.pt", weights_only=True)
    payload["state_dict"] = torch.load(din_run / "model.pt", weights_only=True)["state_dict"]
    folder = copy_run(eta_run, tmp_path / "patched")
    torch.save(payload, folder / "model.pt")
    cli_error(capsys, ["evaluate", "--checkpoint", str(folder), "--no-progress"], "does not fit", "'eta'")


def test_foreign_checkpoint_file(tmp_path, capsys, eta_run):
    folder = copy_run(eta_run, tmp_path / "foreign")
    torch.save({"weights": torch.zeros(3), "epoch": 1}, folder / "model.pt")
    cli_error(capsys, ["evaluate", "--checkpoint", str(folder), "--no-progress"], "not an etarec checkpoint", "model.pt")
    torch.save([1, 2, 3], folder / "model.pt")
    cli_error(capsys, ["evaluate", "--checkpoint", str(folder), "--no-progress"], "not an etarec checkpoint")


@pytest.mark.parametrize("text", ["model: {name: eta\n", "- eta\n", "model: [eta]\n"],
                         ids=["invalid-yaml", "list", "model-not-a-mapping"])
def test_corrupt_run_config(tmp_path, capsys, eta_run, text):
    folder = copy_run(eta_run, tmp_path / "run")
    (folder / "config.yaml").write_text(text)
    cli_error(capsys, ["evaluate", "--checkpoint", str(folder), "--no-progress"], "config.yaml", "corrupt")


def test_missing_checkpoint(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    cli_error(capsys, ["evaluate", "--checkpoint", str(tmp_path / "run"), "--no-progress"], "no checkpoint", "model.pt")
    with pytest.raises(EtarecError, match="no checkpoint"):
        load_checkpoint(tmp_path / "nowhere")
