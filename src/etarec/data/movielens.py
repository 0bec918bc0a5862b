"""MovieLens readers (ml-latest-small, ML-1M in the NCF layout, ML-100K) into RawEvents.

An item's category is its first listed genre; the action is the rating. The documented MovieLens
protocol (README) orders a user's ratings by (timestamp, item): ratings of the same second are
ordered by item id and are each other's history (ties=ITEM_ORDER), as every committed result assumes.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from etarec.data.files import read_table, require_files
from etarec.data.schema import ITEM_ORDER, RawEvents
from etarec.errors import EtarecError


def _rating_events(ratings: pd.DataFrame, genre: pd.Series) -> pd.DataFrame:
    """ratings (user, item, rating, timestamp) + item -> first genre: the canonical events.

    Items without a genre get NaN, which encoding turns into the "unknown" category.
    """
    return pd.DataFrame({"user": ratings["user"], "item": ratings["item"], "category": ratings["item"].map(genre),
                         "timestamp": ratings["timestamp"], "action": ratings["rating"]})


def read_latest_small(path: Path) -> RawEvents:
    ratings_file, movies_file = require_files(path, "ratings.csv", "movies.csv")
    ratings = read_table(ratings_file, columns=["userId", "movieId", "rating", "timestamp"],
                         numeric=("userId", "movieId", "rating", "timestamp"), timestamps=("timestamp",))
    movies = read_table(movies_file, columns=["movieId", "genres"])
    genre = movies.set_index("movieId")["genres"].str.split("|").str[0]
    ratings = ratings.rename(columns={"userId": "user", "movieId": "item"})
    return RawEvents("ml-latest-small", _rating_events(ratings, genre), ties=ITEM_ORDER)


def read_ml1m(path: Path) -> RawEvents:
    train, test, movies_file, mapping_file, users_file = require_files(
        path, "ml-1m.train.rating", "ml-1m.test.rating", "movies.dat", "ncf_item_to_movie_id.csv", "users.dat"
    )
    names = ["user", "item", "rating", "timestamp"]
    ratings = pd.concat(
        [read_table(f, sep="\t", header=None, names=names, columns=names, numeric=names,
                    timestamps=("timestamp",)) for f in (train, test)],
        ignore_index=True,
    )
    movies = read_table(movies_file, sep="::", header=None, names=["movie_id", "title", "genres"],
                        columns=["movie_id", "genres"], numeric=("movie_id",), encoding="latin-1")
    mapping = read_table(mapping_file, columns=["ncf_item_id", "movie_id"])
    genre = movies.set_index("movie_id")["genres"].str.split("|").str[0]
    item_genre = mapping.set_index("ncf_item_id")["movie_id"].map(genre)
    users = read_table(users_file, sep="::", header=None, names=["user_id", "gender", "age", "occupation", "zip"],
                       columns=["user_id", "gender", "age", "occupation"], numeric=("user_id",), encoding="latin-1")
    profiles = pd.DataFrame(
        {
            "user": users["user_id"] - 1,  # the NCF files number users from 0
            "gender": users["gender"],
            "age": users["age"],
            "occupation": users["occupation"],
        }
    )
    return RawEvents("ml-1m", _rating_events(ratings, item_genre), profiles=profiles, ties=ITEM_ORDER)


def read_ml100k(path: Path) -> RawEvents:
    data_file, item_file, genre_file, user_file = require_files(path, "u.data", "u.item", "u.genre", "u.user")
    names = ["user", "item", "rating", "timestamp"]
    ratings = read_table(data_file, sep="\t", header=None, names=names, columns=names, numeric=names,
                         timestamps=("timestamp",))
    genres = read_table(genre_file, sep="|", header=None, names=["genre", "index"], columns=["genre", "index"],
                        numeric=("index",))
    items = read_table(item_file, sep="|", header=None, encoding="latin-1", columns=None)
    flags = items.iloc[:, -len(genres):]
    if items.shape[1] <= len(genres) or not flags.isin([0, 1]).all(axis=None):
        raise EtarecError(f"{item_file} is malformed: its last {len(genres)} columns must be 0/1 genre flags "
                          f"(one per line of {genre_file.name}); check the file or re-download it")
    flags = flags.to_numpy()
    first_genre = np.where(flags.any(axis=1), genres["genre"].to_numpy()[flags.argmax(axis=1)], None)
    genre = pd.Series(first_genre, index=items.iloc[:, 0].to_numpy())
    users = read_table(user_file, sep="|", header=None, names=["user", "age", "gender", "occupation", "zip"],
                       columns=["user", "age", "gender", "occupation"], numeric=("user", "age"))
    profiles = pd.DataFrame(
        {
            "user": users["user"],
            "age": pd.cut(users["age"], [0, 18, 25, 35, 45, 50, 56, 200], right=False, labels=False),
            "gender": users["gender"],
            "occupation": users["occupation"],
        }
    )
    return RawEvents("ml-100k", _rating_events(ratings, genre), profiles=profiles, ties=ITEM_ORDER)
