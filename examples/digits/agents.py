"""Agents of the digits example: real classifiers on scikit-learn's handwritten digits.

The data ships inside scikit-learn (nothing is downloaded). Each classifier agent trains on
the training split in ``setup`` with the hyper-parameters it is given, then serves
``forward(features=[64 floats]) -> {"label": digit}``.
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


def examples(n: int = 120) -> list[otpy.Example]:
    """The first ``n`` test digits as examples: raw pixel values in, the digit as label."""
    digits = load_digits()
    _, test_X, _, test_y = train_test_split(digits.data, digits.target, test_size=0.3, random_state=SPLIT_SEED)
    return [otpy.Example(inputs={"features": [float(v) for v in x]}, label=int(y))
            for x, y in zip(test_X[:n], test_y[:n])]


def accuracy(example: otpy.Example, prediction) -> float:
    return float(prediction.get("label") == example.label)


class Scale(otpy.Program):
    """Preprocessing: pixel values 0..16 to 0..1."""

    def on_config(self, config):
        """Variables do not change how it scales: nothing to do (and no restart)."""

    def forward(self, features):
        return {"features": [v / 16.0 for v in features]}


class _Classifier(otpy.Program):
    def setup(self, args, config):
        train_X, _, train_y, _ = dataset()
        self.model = self.make({**config, **args})
        self.model.fit(train_X, train_y)

    def on_config(self, config):
        """Its knobs come as args at (re)start: the optimizer reconfigures it to change them."""

    def forward(self, features):
        return {"label": int(self.model.predict([features])[0])}


class KNN(_Classifier):
    def make(self, knobs):
        return KNeighborsClassifier(n_neighbors=int(knobs.get("k", 5)))


class SVM(_Classifier):
    def make(self, knobs):
        return SVC(C=float(knobs.get("C", 1.0)), gamma=float(knobs.get("gamma", 0.01)))


class Tree(_Classifier):
    def make(self, knobs):
        return DecisionTreeClassifier(max_depth=int(knobs.get("max_depth", 8)), random_state=0)


class Manager(otpy.ManagerProgram):
    """Runs the preprocessing agent, then whichever classifier program the variables chose."""

    def on_config(self, config):
        self.config = dict(config)  # resolved again at every forward; no restart needed
