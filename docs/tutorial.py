# %% [markdown]
# # Tutorial: from a DataFrame to recommendations
#
# This page is [`docs/tutorial.py`](tutorial.py), run from top to bottom every time the docs
# are built (CI builds them on every change), so each output and figure below is what today's
# mtrec gives. It trains on MovieLens 100K for a few epochs. To run it yourself, set
# `MTREC_DATA_DIR` to the folder that holds `ml-100k/` and run `python docs/tutorial.py`, or its
# cells one by one in an editor that reads `# %%` cells (VS Code, PyCharm, Jupytext).
#
# ## The data, as pandas DataFrames
#
# MovieLens 100K's `u.data` holds one rating per line (user, item, rating, time), and `u.item`
# a movie per line with nineteen 0/1 genre flags.

# %%
import os
from pathlib import Path

import pandas as pd

movielens = Path(os.environ["MTREC_DATA_DIR"]) / "ml-100k"
ratings = pd.read_csv(movielens / "u.data", sep="\t", names=["user", "item", "rating", "timestamp"])
ratings.head()

# %%
genre_names = pd.read_csv(movielens / "u.genre", sep="|", names=["genre", "index"])["genre"].tolist()
movies = pd.read_csv(
    movielens / "u.item",
    sep="|",
    encoding="latin-1",
    names=["item", "title", "released", "video_released", "url", *genre_names],
)
# One "Action|Comedy" text per movie, from its 0/1 flags.
flags = movies.melt(id_vars="item", value_vars=genre_names, var_name="genre").query("value == 1")
movies["genres"] = movies["item"].map(flags.groupby("item")["genre"].agg("|".join)).fillna("")
movies = movies[["item", "title", "genres"]]
movies.head()

# %% [markdown]
# `Interactions.from_frame` reads the ratings frame through Arrow (its columns are recognised
# by name, as in files), checks it as the file readers do, and attaches the movies' titles and
# genres, which recommendations then carry.

# %%
from mtrec.data import Interactions

data = Interactions.from_frame(ratings, items=movies)
print(f"{data.num_users} users, {data.num_items} items, {len(data):,} ratings on a {data.rating_scale} scale")

# %% [markdown]
# ## Training with the quality preset's settings
#
# `preset("quality")` is the configuration chosen on validation data (README, "Presets"): its
# model settings go to `MultitaskModel`, its data spec splits the data (95% for training, 5% of
# that carved off for validation, 5% for the test), and its early stopping chooses the epoch
# whose weights are kept. The preset trains for up to 60 epochs; here, a few. This tutorial ends
# by exporting the vectors to Parquet, which holds a dot-product watch score and a rating head of
# `[u, q, u*q]`: so it turns off the preset's item-item path and the rating head's reading of
# the watch score (`mtrec train` keeps both).

# %%
from mtrec import MultitaskModel
from mtrec.config import preset

config = preset("quality", seed=0, item_item=False, rating_reads_score=False)
train, valid, test = config.data.split_data(data)
model = MultitaskModel(**config.model)
model.fit(train, 8, validation=valid, test=test, early_stopping=config.early_stopping, patience=config.patience)
print(f"trained on {len(train):,} ratings; validation {len(valid):,}, test {len(test):,}")
print(f"epoch chosen on validation: {model.selected_epoch_} of {len(model.history_)}")

# %% [markdown]
# ## Metrics per epoch
#
# `history_frame()` gives one row per epoch: the training losses and every metric measured.

# %%
history = model.history_frame()
history[["epoch", "train_loss", "train_rating", "valid_mse", "valid_mrr", "test_mse", "test_mrr", "learning_rate"]]

# %%
import matplotlib.pyplot as plt

figure, (errors, ranking) = plt.subplots(1, 2, figsize=(9, 3.5))
history.plot(x="epoch", y=["valid_mse", "test_mse"], ax=errors, title="Rating error (MSE, lower is better)")
history.plot(x="epoch", y=["valid_mrr", "test_mrr"], ax=ranking, title="Ranking (MRR, higher is better)")
for axes in (errors, ranking):
    axes.axvline(model.selected_epoch_, color="grey", linestyle=":", label="epoch kept")
    axes.legend()
figure.tight_layout()

# %% [markdown]
# ## Recommendations as a table
#
# `Recommender` answers in the data's own ids. `recommend_frame` gives one row per (user, rank),
# with the items the user rated left out. User 196 rated these highest:

# %%
from mtrec.serving.recommender import Recommender

recommender = Recommender(model)
user_196 = ratings[ratings["user"] == 196].merge(movies, on="item")
user_196.nlargest(5, "rating")[["title", "genres", "rating"]]

# %%
top = recommender.recommend_frame([196], k=10)
top[["rank", "item", "title", "watch_score", "p", "rating"]]

# %% [markdown]
# `p` is the likelihood head's raw score; `watch_score` the share of the catalogue this item
# outscores for the user; `rating` the rating head's prediction. The same filters as
# `recommend` apply, for example comedies only:

# %%
recommender.recommend_frame([196], k=5, genres=["Comedy"])[["rank", "title", "watch_score", "rating"]]

# %% [markdown]
# ## Similar items
#
# The items closest to a movie by cosine similarity of the item vectors, named by title:

# %%
from dataclasses import asdict

similar = recommender.similar("Star Wars (1977)", k=5)
pd.DataFrame(map(asdict, similar.items))[["rank", "item", "title", "num_ratings", "similarity"]]

# %% [markdown]
# ## Export for a vector database
#
# `export_model` writes the user and item vectors and biases to Parquet, keyed by the data's
# ids (atomically, with a manifest of checksums); `model.json` states the formula of the watch
# score. Here into a temporary folder:

# %%
import json
import tempfile

from mtrec.serving.export import export_model

scratch = tempfile.TemporaryDirectory()
folder = export_model(model, Path(scratch.name) / "vectors", format="parquet")
print(sorted(path.name for path in folder.iterdir()))
print(json.loads((folder / "model.json").read_text())["watch_score"])

# %% [markdown]
# The files alone reproduce the model's scores, here those of user 196's recommendations, with
# pandas and numpy (the check fails the docs build if they ever disagree):

# %%
import numpy as np

users = pd.read_parquet(folder / "users.parquet").set_index("user")
items = pd.read_parquet(folder / "items.parquet").set_index("item").loc[top["item"]]
user = users.loc[196]
p = np.stack(items["vector"]) @ user["vector"] + user["bias"] + items["bias"].to_numpy()
np.testing.assert_allclose(p, top["p"], atol=1e-5)
print(f"largest difference: {np.abs(p - top['p']).max():.1e}")
pd.DataFrame({"title": items["title"], "p from the Parquet files": p, "p from the model": top["p"].to_numpy()})
