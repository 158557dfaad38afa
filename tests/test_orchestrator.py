"""The watch loop's decisions: when to search, when to apply, when a round is due (an injected
clock), and one round over fakes, each decision announced."""

from __future__ import annotations

import pytest

from otpy.optimize.optimizer import CompileResult, Evaluation, Example, OptimizeError
from otpy.optimize.orchestrator import Orchestrator, Schedule, WatchPolicy, apply_verdict, search_verdict
from otpy.wire.errors import CallTimeout, NoSuchAgent
from otpy.wire.protocol import Change

pytestmark = pytest.mark.timeout(30)


def test_a_score_below_the_threshold_searches_and_one_at_it_does_not():
    policy = WatchPolicy(threshold=0.9)
    assert search_verdict(policy, 1, 0.85).act
    assert "below threshold 0.9" in search_verdict(policy, 1, 0.85).reason
    assert not search_verdict(policy, 1, 0.9).act
    assert search_verdict(policy, 1, None).act  # every live call failed: below any threshold


def test_a_schedule_searches_every_n_rounds_whatever_the_score():
    policy = WatchPolicy(every=3)
    assert [search_verdict(policy, n, 1.0).act for n in range(1, 7)] == [False, False, True, False, False, True]
    assert search_verdict(policy, 4, 1.0).reason == "next scheduled search at round 6"


def test_a_candidate_is_applied_only_when_it_beats_the_live_score_by_more_than_the_margin():
    policy = WatchPolicy(threshold=0.9, margin=0.02)
    assert apply_verdict(policy, 0.80, 0.83).act
    assert not apply_verdict(policy, 0.80, 0.82).act  # by the margin exactly: not more
    assert not apply_verdict(policy, 0.80, 0.70).act
    assert not apply_verdict(WatchPolicy(threshold=0.9), 0.8, 0.8).act  # equal never beats
    assert apply_verdict(policy, None, 0.1).act and not apply_verdict(policy, 0.5, None).act


def test_a_policy_that_could_never_search_or_has_a_bad_field_is_refused_naming_it():
    with pytest.raises(ValueError, match="threshold or every"):
        WatchPolicy()
    with pytest.raises(ValueError, match="interval: got 0"):
        WatchPolicy(threshold=0.5, interval=0)
    with pytest.raises(ValueError, match="margin: got -0.1"):
        WatchPolicy(threshold=0.5, margin=-0.1)


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_rounds_are_due_every_interval_and_a_late_round_makes_no_burst():
    clock = Clock()
    schedule = Schedule(10.0, clock)
    assert schedule.delay() == 0  # the first round at once
    schedule.ran()
    clock.now = 104.0
    assert schedule.delay() == 6.0
    clock.now = 135.0  # the round due at 110 ran late, at 135
    schedule.ran()
    assert schedule.delay() == 0 and schedule.due == 135.0  # not three rounds in a row to catch up
    schedule.ran()
    assert schedule.delay() == 10.0


VALSET = [Example(inputs={"x": i}, label=i) for i in range(10)]


class FakeLive:
    def __init__(self, score):
        self.score, self.config, self.applied = score, {"global": {"p": "m:Old"}}, []

    def current(self):
        return self.config

    def apply(self, config):
        self.applied.append(config)
        return [Change(action="set", scope="global", name="p", before="m:Old", after=config["global"]["p"])]


def orchestrator(policy, live, candidate_score, events, searched=None):
    def search(baseline, trials):
        if searched is not None:
            searched.append((baseline, trials))
        if isinstance(candidate_score, BaseException):
            raise candidate_score
        if candidate_score == "error":
            raise OptimizeError("every trial failed")
        return CompileResult(config={"global": {"p": "m:New"}}, train_score=1.0, val_score=candidate_score,
                             study_name="s", storage=None, trials=trials)

    return Orchestrator(policy, valset=VALSET, live=live, search=search, clock=Clock(),
                        score_live=lambda examples: Evaluation(score=live.score, count=len(examples)),
                        announce=lambda kind, detail: events.append((kind, detail)))


def test_a_round_above_the_threshold_only_scores_and_says_so():
    events = []
    report = orchestrator(WatchPolicy(threshold=0.5, sample=4), FakeLive(0.9), 1.0, events).round()
    assert [kind for kind, _ in events] == ["watch_scored"]
    assert events[0][1] == "round 1: live score 0.9000 on 4 validation examples"
    assert report.result is None


def test_a_falling_score_searches_from_the_live_values_and_applies_a_better_candidate():
    events, searched, live = [], [], FakeLive(0.6)
    report = orchestrator(WatchPolicy(threshold=0.8, trials=7, margin=0.05), live, 0.9, events, searched).round()
    assert [kind for kind, _ in events] == ["watch_scored", "watch_search", "watch_applied"]
    assert searched == [({"global": {"p": "m:Old"}}, 7)]
    assert live.applied == [{"global": {"p": "m:New"}}]
    assert 'candidate 0.9000 beats live 0.6000' in events[-1][1] and '~ global.p "m:Old" -> "m:New"' in events[-1][1]
    assert report.applied.act and report.live_validation == 0.6


def test_a_candidate_that_does_not_beat_the_live_score_by_the_margin_is_not_applied():
    events, live = [], FakeLive(0.6)
    orchestrator(WatchPolicy(threshold=0.8, margin=0.05), live, 0.63, events).round()
    assert [kind for kind, _ in events] == ["watch_scored", "watch_search", "watch_kept"]
    assert live.applied == []


def test_a_failed_search_is_announced_and_changes_nothing():
    events, live = [], FakeLive(0.1)
    orchestrator(WatchPolicy(threshold=0.8), live, "error", events).round()
    assert [kind for kind, _ in events] == ["watch_scored", "watch_search", "watch_failed"]
    assert live.applied == []


@pytest.mark.parametrize("error", [NoSuchAgent("solver-1"), CallTimeout("manager: no reply in 30s"),
                                   TimeoutError("the scratch node did not answer"),
                                   ConnectionResetError("the scratch node went away")])
def test_a_search_that_raises_a_call_or_timeout_error_is_announced_and_the_loop_goes_on(error):
    events, live = [], FakeLive(0.1)
    loop = orchestrator(WatchPolicy(threshold=0.8, interval=0.01), live, error, events)
    assert [report.number for report in loop.run(rounds=2)] == [1, 2]
    assert [kind for kind, _ in events] == ["watch_scored", "watch_search", "watch_failed"] * 2
    assert str(error) in events[2][1] and type(error).__name__ in events[2][1]
    assert live.applied == []


def test_an_apply_that_raises_a_call_error_is_announced_and_the_loop_goes_on():
    class Unreachable(FakeLive):
        def apply(self, config):
            raise CallTimeout("set_variables: no reply")

    events, live = [], Unreachable(0.1)
    loop = orchestrator(WatchPolicy(threshold=0.8, interval=0.01), live, 0.9, events)
    assert len(loop.run(rounds=2)) == 2
    assert [kind for kind, _ in events][-1] == "watch_failed" and "no reply" in events[-1][1]


def test_the_sample_is_seeded_and_the_comparison_uses_all_the_validation_data():
    scored = []
    live = FakeLive(0.5)
    loop = Orchestrator(WatchPolicy(threshold=0.8, sample=3), valset=VALSET, live=live, clock=Clock(),
                        search=lambda baseline, trials: CompileResult(
                            config={"global": {"p": "m:New"}}, train_score=1.0, val_score=0.4,
                            study_name="s", storage=None, trials=trials),
                        score_live=lambda examples: scored.append(len(examples)) or Evaluation(0.5, len(examples)),
                        announce=lambda kind, detail: None)
    assert loop.sample(1) == loop.sample(1) and len(loop.sample(1)) == 3
    loop.round()
    assert scored == [3, 10]  # the round's sample, then the whole valset to compare the candidate with


def test_run_does_the_rounds_asked_at_the_schedules_times():
    events = []
    loop = orchestrator(WatchPolicy(threshold=0.5, interval=0.01), FakeLive(0.9), 1.0, events)
    assert [report.number for report in loop.run(rounds=3)] == [1, 2, 3]
