"""The user's own files: ML-100K written as a CSV with string ids trains like the built-in loader."""

import numpy as np
import pytest

from mtrec.data import load_ratings_file, random_split
from mtrec.model import MultitaskModel


@pytest.mark.slow
def test_a_csv_of_ml100k_with_string_ids_gives_the_same_metrics(ml100k, tmp_path):
    path = tmp_path / "ratings.csv"
    with path.open("w") as file:
        file.write("customer,movie,stars,when\n")
        for u, i, r, t in zip(ml100k.user_ids[ml100k.users], ml100k.item_ids[ml100k.items], ml100k.ratings, ml100k.timestamps):
            file.write(f"user-{u},movie-{i},{r:g},{t}\n")
    custom = load_ratings_file(path, user_col="customer", item_col="movie", rating_col="stars", time_col="when")
    assert custom.user_ids[:3].tolist() == ["user-1", "user-2", "user-3"]
    assert np.array_equal(custom.users, ml100k.users) and np.array_equal(custom.items, ml100k.items)

    runs = []
    for data in (ml100k, custom):
        train, test = random_split(data, test_fraction=0.05, seed=0)
        model = MultitaskModel(seed=0).fit(train, epochs=2, test=test)
        runs.append([(r.test_mse, r.test_mrr, r.train_loss) for r in model.history_])
    assert runs[0] == runs[1]
