"""Agents of the digits example: real classifiers on scikit-learn's handwritten digits.

The data ships inside scikit-learn (nothing is downloaded). Each classifier agent trains on
the training split in ``setup`` with the knobs its configuration gives (the registry's values
of its scopes), retrains in ``on_config`` when they change, and serves
``forward(features=[64 floats]) -> {"label": digit}``.

Three disjoint sets: the classifiers train on the 70% training split; the optimizer scores
trials on ``examples`` (the first test digits) and the best one on ``validation`` (the last
test digits), which no trial saw.
"""

from __future__ import annotations

from functools import lru_cache

# Imported here, at module level, so otpy's zygote loads them once: a restarted or
# reconfigured classifier is a fork, not a fresh scikit-learn import.
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.neighbors import KNeighborsClassifier
from sklearn.svm import SVC
from sklearn.tree import DecisionTreeClassifier

import otpy

SPLIT_SEED = 0


@lru_cache(maxsize=1)
def dataset():
    """``(train_X, test_X, train_y, test_y)``: a fixed 70/30 split of the 1,797 digits, scaled to 0..1."""
    digits = load_digits()
    return train_test_split(digits.data / 16.0, digits.target, test_size=0.3, random_state=SPLIT_SEED)


HELD_OUT = 270  # the test split's 540 digits: the first half for trials, the second for validation


def _test_examples(start: int, stop: int) -> list[otpy.Example]:
    """Test digits ``start:stop`` as examples: raw pixel values in, the digit as label."""
    digits = load_digits()
    _, test_X, _, test_y = train_test_split(digits.data, digits.target, test_size=0.3, random_state=SPLIT_SEED)
    return [otpy.Example(inputs={"features": [float(v) for v in x]}, label=int(y))
            for x, y in zip(test_X[start:stop], test_y[start:stop])]


def examples(n: int = 120) -> list[otpy.Example]:
    """The first ``n`` test digits (at most ``HELD_OUT``): what the trials are scored on."""
    if not 0 < n <= HELD_OUT:
        raise ValueError(f"n: got {n}; expected 1..{HELD_OUT} (the rest is held out for validation)")
    return _test_examples(0, n)


def validation(n: int = 200) -> list[otpy.Example]:
    """The last ``n`` test digits (at most 540 - ``HELD_OUT``): held out, never seen by a trial."""
    if not 0 < n <= 540 - HELD_OUT:
        raise ValueError(f"n: got {n}; expected 1..{540 - HELD_OUT} (the test digits after the trials' ones)")
    return _test_examples(540 - n, 540)


def accuracy(example: otpy.Example, prediction) -> float:
    return float(prediction.get("label") == example.label)


class Scale(otpy.Program):
    """Preprocessing: pixel values 0..16 to 0..1."""

    def on_config(self, config):
        """Variables do not change how it scales: nothing to do (and no restart)."""

    def forward(self, features):
        return {"features": [v / 16.0 for v in features]}


class _Classifier(otpy.Program):
    """A classifier whose knobs (``KNOBS``) come from its configuration: the registry's values
    of scope ``pool`` (its supervisor's), so setting ``pool.k`` retrains a running KNN in place."""

    KNOBS: tuple[str, ...] = ()

    def setup(self, args, config):
        self.knobs = None
        self.train({**config, **args})

    def on_config(self, config):
        """New values: retrain, when one of this classifier's own knobs changed (calls wait meanwhile)."""
        self.train(config)

    def train(self, config):
        knobs = {name: config[name] for name in self.KNOBS if name in config}
        if knobs == self.knobs:
            return
        train_X, _, train_y, _ = dataset()
        model = self.make(knobs)
        model.fit(train_X, train_y)
        self.model, self.knobs = model, knobs

    def forward(self, features):
        return {"label": int(self.model.predict([features])[0])}


class KNN(_Classifier):
    KNOBS = ("k",)

    def make(self, knobs):
        return KNeighborsClassifier(n_neighbors=int(knobs.get("k", 5)))


class SVM(_Classifier):
    KNOBS = ("C", "gamma")

    def make(self, knobs):
        return SVC(C=float(knobs.get("C", 1.0)), gamma=float(knobs.get("gamma", 0.01)))


class Tree(_Classifier):
    KNOBS = ("max_depth",)

    def make(self, knobs):
        return DecisionTreeClassifier(max_depth=int(knobs.get("max_depth", 8)), random_state=0)


class Manager(otpy.ManagerProgram):
    """Runs the preprocessing agent, then whichever classifier program the variables chose."""

    def on_config(self, config):
        self.config = dict(config)  # resolved again at every forward; no restart needed
