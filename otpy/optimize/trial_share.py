"""One worker's part of a study several workers run (``otpy optimize --workers N``, ``--join``)."""

from __future__ import annotations


class TrialShare:
    """One worker's part of a study that several run: it takes a trial only while the study has
    fewer than ``trials`` (finished, running or waiting) before it, and stops once it has them.

    optuna numbers a study's trials under a lock on the study's row, so the trials numbered
    before this one are decided when it runs: counting those not pruned tells, exactly, whether
    the study already has its trials. One that is past them is pruned (not a finished trial,
    never scored) and its worker stops: the study ends with ``trials`` finished ones, however
    many workers ran them."""

    def __init__(self, trials: int) -> None:
        self.trials, self.surplus = trials, 0

    def claim(self, study, trial) -> bool:
        """Whether ``trial`` is one of the study's ``trials``; one past them is counted surplus
        (its worker prunes it and stops)."""
        from optuna.trial import TrialState

        before = [t for t in study.get_trials(deepcopy=False) if t.number < trial.number]
        if sum(t.state != TrialState.PRUNED for t in before) >= self.trials:
            self.surplus += 1
            trial.set_user_attr("surplus", True)
            return False
        return True

    def stop_when_done(self, study, trial) -> None:
        """After each trial: stop when the study's trials are all taken (finished, or running on
        another worker), so that a worker seldom starts one only to prune it."""
        if self.all_taken(study):
            study.stop()

    def all_taken(self, study) -> bool:
        from optuna.trial import TrialState

        taken = (TrialState.COMPLETE, TrialState.FAIL, TrialState.RUNNING)  # a waiting one is nobody's yet
        return len(study.get_trials(deepcopy=False, states=taken)) >= self.trials
