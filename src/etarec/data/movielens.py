"""MovieLens readers (ml-latest-small, ML-1M in the NCF layout, ML-100K) into RawEvents.

An item's category is its first listed genre; the action is the rating.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from etarec.data.files import read_table, require_files
from etarec.data.schema import RawEvents


def read_latest_small(path: Path) -> RawEvents:
    ratings_file, movies_file = require_files(path, "ratings.csv", "movies.csv")
    ratings = read_table(ratings_file, columns=["userId", "movieId", "rating", "timestamp"],
                         numeric=("userId", "movieId", "rating", "timestamp"))
    movies = read_table(movies_file, columns=["movieId", "genres"])
    genre = movies.set_index("movieId")["genres"].str.split("|").str[0]
    events = pd.DataFrame(
        {
            "user": ratings["userId"],
            "item": ratings["movieId"],
            "category": ratings["movieId"].map(genre),
            "timestamp": ratings["timestamp"],
            "action": ratings["rating"],
        }
    )
    return RawEvents("ml-latest-small", events)


def read_ml1m(path: Path) -> RawEvents:
    train, test, movies_file, mapping_file, users_file = require_files(
        path, "ml-1m.train.rating", "ml-1m.test.rating", "movies.dat", "ncf_item_to_movie_id.csv", "users.dat"
    )
    names = ["user", "item", "rating", "timestamp"]
    ratings = pd.concat(
        [read_table(f, sep="\t", header=None, names=names, columns=names, numeric=names) for f in (train, test)],
        ignore_index=True,
    )
    movies = read_table(movies_file, sep="::", header=None, names=["movie_id", "title", "genres"],
                        columns=["movie_id", "genres"], numeric=("movie_id",), encoding="latin-1")
    mapping = read_table(mapping_file, columns=["ncf_item_id", "movie_id"])
    genre = movies.set_index("movie_id")["genres"].str.split("|").str[0]
    item_genre = mapping.set_index("ncf_item_id")["movie_id"].map(genre)
    users = read_table(users_file, sep="::", header=None, names=["user_id", "gender", "age", "occupation", "zip"],
                       columns=["user_id", "gender", "age", "occupation"], encoding="latin-1")
    profiles = pd.DataFrame(
        {
            "user": users["user_id"] - 1,  # the NCF files number users from 0
            "gender": users["gender"],
            "age": users["age"],
            "occupation": users["occupation"],
        }
    )
    events = pd.DataFrame(
        {
            "user": ratings["user"],
            "item": ratings["item"],
            "category": ratings["item"].map(item_genre),  # unmapped items -> NaN -> "unknown"
            "timestamp": ratings["timestamp"],
            "action": ratings["rating"],
        }
    )
    return RawEvents("ml-1m", events, profiles=profiles)


def read_ml100k(path: Path) -> RawEvents:
    data_file, item_file, genre_file, user_file = require_files(path, "u.data", "u.item", "u.genre", "u.user")
    names = ["user", "item", "rating", "timestamp"]
    ratings = read_table(data_file, sep="\t", header=None, names=names, columns=names, numeric=names)
    genres = read_table(genre_file, sep="|", header=None, names=["genre", "index"], columns=["genre", "index"])
    items = read_table(item_file, sep="|", header=None, encoding="latin-1", columns=None)
    flags = items.iloc[:, -len(genres):].to_numpy()
    first_genre = np.where(flags.any(axis=1), genres["genre"].to_numpy()[flags.argmax(axis=1)], None)
    genre = pd.Series(first_genre, index=items.iloc[:, 0].to_numpy())
    users = read_table(user_file, sep="|", header=None, names=["user", "age", "gender", "occupation", "zip"],
                       columns=["user", "age", "gender", "occupation"])
    profiles = pd.DataFrame(
        {
            "user": users["user"],
            "age": pd.cut(users["age"], [0, 18, 25, 35, 45, 50, 56, 200], right=False, labels=False),
            "gender": users["gender"],
            "occupation": users["occupation"],
        }
    )
    events = pd.DataFrame(
        {
            "user": ratings["user"],
            "item": ratings["item"],
            "category": ratings["item"].map(genre),
            "timestamp": ratings["timestamp"],
            "action": ratings["rating"],
        }
    )
    return RawEvents("ml-100k", events, profiles=profiles)
