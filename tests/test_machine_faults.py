"""Hardening of the supervision decisions, without processes: the cost of the restart window,
exits that are not the child's fault (``lost``), what a child is shown as between events,
and the dynamic supervisor's parallel stops."""

from __future__ import annotations

import math

from otpy.supervision.intensity import RestartWindow


# --- the restart window costs O(1) amortized per restart --------------------------------------


class _CountedSecond(int):
    """A whole second that counts every comparison made with it (the window's only work)."""

    comparisons = 0

    def __sub__(self, other):
        return _CountedSecond(int(self) - int(other))

    def _count(op):
        def compare(self, other):
            _CountedSecond.comparisons += 1
            return op(int(self), int(other))
        return compare

    __lt__ = _count(int.__lt__)
    __le__ = _count(int.__le__)
    __gt__ = _count(int.__gt__)
    __ge__ = _count(int.__ge__)
    del _count


class _Now(float):
    """A clock reading whose whole second (``math.floor``) is a ``_CountedSecond``."""

    def __floor__(self):
        return _CountedSecond(math.floor(float(self)))


def _comparisons_to_record(stamps: list[float], max_seconds: int) -> int:
    window = RestartWindow(max_restarts=len(stamps) + 1, max_seconds=max_seconds)
    _CountedSecond.comparisons = 0
    for now in stamps:
        assert window.record(_Now(now))
    return _CountedSecond.comparisons


class TestWindowCost:
    """OTP's add_restart filters its whole list on every restart: O(restarts in the window).
    With a high intensity that is milliseconds per restart (6.5 ms at 100k stamps); the
    window here pops expired stamps from the left, so n restarts cost O(n) in all."""

    N = 2000

    def test_restarts_within_one_window_cost_constant_work_each(self):
        # Every stamp stays in the window: the old list filter compared each one each time
        # (n²/2 = 2 million comparisons); popping from the left compares once per restart.
        assert _comparisons_to_record([0.5] * self.N, max_seconds=5) <= 2 * self.N

    def test_a_sliding_window_pops_each_stamp_once(self):
        # Ten restarts a second for five minutes, 5 s window: about 50 stamps held at a time.
        stamps = [i / 10 for i in range(self.N)]
        assert _comparisons_to_record(stamps, max_seconds=5) <= 3 * self.N

    def test_the_semantics_are_otps_add_restart(self):
        # Whole seconds; kept while >= now - max_seconds; more than max_restarts gives up.
        window = RestartWindow(max_restarts=2, max_seconds=5)
        assert [window.record(t) for t in (0.9, 5.0, 5.99)] == [True, True, False]  # 0 is kept at 5
        window = RestartWindow(max_restarts=2, max_seconds=5)
        assert [window.record(t) for t in (0.9, 5.0, 6.0)] == [True, True, True]  # 0 is dropped at 6
        assert len(window) == 2
        assert RestartWindow(max_restarts=0, max_seconds=5).record(0.0) is False


# --- a child lost with otpy's zygote is restarted, not charged to intensity -------------------

import pytest  # noqa: E402

from machine_driver import Driver, start_child  # noqa: E402
from otpy.supervision.dynamic import DynamicMachine  # noqa: E402
from otpy.supervision.effects import Post, Retry, Stop  # noqa: E402
from otpy.supervision.exit import ExitReason  # noqa: E402
from otpy.supervision.machine import StaticMachine  # noqa: E402
from otpy.specs.model import ChildSpec, DynamicSupervisorSpec, SupervisorSpec  # noqa: E402

LOST = ExitReason(kind="lost", detail="the zygote died")
CRASHED = ExitReason(kind="crashed", code=1)
TEN = [f"c{i}" for i in range(10)]


def _worker(id: str, **fields) -> ChildSpec:
    return ChildSpec(id=id, command=("true",), **fields)


def _static(ids, strategy="one_for_one", **fields) -> Driver:
    """A running static supervisor with the default intensity (3 in 5 s) and an empty log."""
    spec = SupervisorSpec(id="sup", strategy=strategy, children=tuple(_worker(i, **fields) for i in ids))
    d = Driver(StaticMachine(spec))
    d.init()
    d.take_log()
    return d


def _dynamic(ids, **fields) -> Driver:
    d = Driver(DynamicMachine(DynamicSupervisorSpec(id="dyn")))
    d.init()
    for i in ids:
        assert d.call(start_child(_worker(i, **fields))).ok
    d.take_log()
    return d


def _lose_all(d: Driver, ids) -> None:
    """The zygote died: every child's current incarnation ends ``lost``, in the same second."""
    for i in ids:
        if i in d.incarnations:
            d.crash(i, LOST)
            d.advance(0.05)


MACHINES = {"static": _static, "dynamic": _dynamic}


class TestLostExits:
    @pytest.mark.parametrize("make", list(MACHINES))
    def test_ten_lost_children_in_one_second_are_all_restarted_and_nothing_is_charged(self, make):
        d = MACHINES[make](TEN)
        _lose_all(d, TEN)
        assert d.exit is None and not d.reports("gave_up")
        assert d.log == [f"start {i}" for i in TEN]
        assert all(d.state(i) == "running" for i in TEN)
        assert len(d.machine.window) == 0
        assert all(d.machine.children[i].restarts == 1 for i in TEN)

    @pytest.mark.parametrize("make", list(MACHINES))
    def test_a_crash_still_counts_after_lost_exits(self, make):
        d = MACHINES[make](TEN)
        _lose_all(d, TEN)
        for _ in range(3):
            d.crash("c0", CRASHED)
        assert d.exit is None and len(d.machine.window) == 3
        d.crash("c0", CRASHED)  # the fourth restart in 5 s: over the default intensity
        assert d.exit is not None and d.exit.reason.kind == "shutdown"
        assert len(d.reports("gave_up")) == 1

    @pytest.mark.parametrize("make", list(MACHINES))
    def test_a_retry_after_a_lost_childs_failed_start_is_charged(self, make):
        d = MACHINES[make](["a"])
        d.fail = {"a": 1}
        d.crash("a", LOST)
        assert len(d.machine.window) == 0 and [type(e) for e in d.inbox] == [Retry]
        d.run_inbox()
        assert d.state("a") == "running" and len(d.machine.window) == 1

    @pytest.mark.parametrize(("restart", "restarted"), [
        ("permanent", True), ("transient", True), ("temporary", False)])
    @pytest.mark.parametrize("make", list(MACHINES))
    def test_lost_is_abnormal_for_the_decision_table(self, make, restart, restarted):
        d = MACHINES[make](["a"], restart=restart)
        lines = d.crash("a", LOST)
        assert (lines == ["start a"]) is restarted
        assert ("a" in d.machine.children) is restarted
        assert len(d.machine.window) == 0

    def test_one_for_all_still_bounces_the_group_on_a_lost_exit(self):
        d = _static("a b c d".split(), strategy="one_for_all")
        assert d.crash("b", LOST) == ["stop d", "stop c", "stop a",
                                      "start a", "start b", "start c", "start d"]
        assert len(d.machine.window) == 0

    def test_rest_for_one_still_restarts_the_later_children_on_a_lost_exit(self):
        d = _static("a b c d".split(), strategy="rest_for_one")
        assert d.crash("b", LOST) == ["stop d", "stop c", "start b", "start c", "start d"]
        assert len(d.machine.window) == 0

    def test_one_for_all_losing_every_child_restarts_the_group_once(self):
        d = _static("a b c d".split(), strategy="one_for_all")
        old = dict(d.incarnations)
        from otpy.supervision.effects import ChildExited
        for i in "abcd":  # the other three exits name incarnations the bounce already replaced
            d.send(ChildExited(i, old[i], LOST))
        assert d.log.count("start a") == 1 and d.exit is None
        assert [e for e in d.effects if isinstance(e, Stop)] == [Stop(("d", "c", "b"))]


# --- what a child is shown as while a chain of starts is under way -----------------------------


class TestStartingFor:
    def test_static_restart_chain_names_the_children_it_will_restart(self):
        d = _static("a b c".split(), strategy="rest_for_one")
        d.on_launch = lambda spec: seen.append({i: d.machine.starting_for(i) for i in "abc"})
        seen: list[dict] = []
        d.crash("b")
        # While b is being started, b and c wait in the chain; a is untouched.
        assert seen[0] == {"a": None, "b": "restart", "c": "restart"}
        assert seen[1] == {"a": None, "b": None, "c": "restart"}
        assert all(d.machine.starting_for(i) is None for i in "abc")

    def test_static_init_and_start_child_are_starts(self):
        spec = SupervisorSpec(id="sup", children=(_worker("a"), _worker("b")))
        seen: list[dict] = []
        d = Driver(StaticMachine(spec))
        d.on_launch = lambda s: seen.append({i: d.machine.starting_for(i) for i in d.machine.order})
        d.init()
        d.call(start_child(_worker("c")))
        assert seen == [{"a": "start", "b": "start"}, {"a": None, "b": "start"},
                        {"a": None, "b": None, "c": "start"}]

    def test_dynamic_start_and_restart(self):
        seen: list = []
        d = _dynamic(["a"])
        d.on_launch = lambda spec: seen.append((spec.id, d.machine.starting_for(spec.id),
                                               d.machine.starting_for("a" if spec.id != "a" else "z")))
        d.call(start_child(_worker("b")))
        d.crash("a")
        assert seen == [("b", "start", None), ("a", "restart", None)]
        assert d.machine.starting_for("a") is None


# --- a dynamic supervisor never stops several children one after another ----------------------


class TestDynamicStopsAreParallel:
    """Its children have no order (Elixir's DynamicSupervisor, simple_one_for_one): every stop
    of more than one child signals them all at once, each within its own shutdown."""

    @staticmethod
    def _stops(d: Driver) -> list[Stop]:
        return [e for e in d.effects if isinstance(e, Stop)]

    def test_shutdown(self):
        d = _dynamic(TEN)
        d.stop()
        [stop] = self._stops(d)
        assert stop.parallel and sorted(stop.ids) == sorted(TEN)

    def test_giving_up(self):
        d = _dynamic(TEN)
        for _ in range(4):
            d.crash("c0", CRASHED)
        [stop] = self._stops(d)
        assert d.exit is not None and stop.parallel and sorted(stop.ids) == TEN[1:]


# --- no state shared between machines ---------------------------------------------------------


class TestNoSharedState:
    """Each machine numbers its own retries: what one supervisor did never shows in another's
    events (the Retry tokens came from one counter for the whole process)."""

    @staticmethod
    def _retries(make) -> list[Retry]:
        d = MACHINES[make](["a", "b"])
        d.fail_always = {"b"}
        d.crash("b", CRASHED)
        d.run_inbox()
        return [e.event for e in d.effects if isinstance(e, Post)]

    @pytest.mark.parametrize("make", list(MACHINES))
    def test_two_machines_driven_alike_post_the_same_retries(self, make):
        first, second = self._retries(make), self._retries(make)
        assert first and first == second

    def test_two_supervisors_number_their_incarnations_alike(self):
        # The shell's incarnation numbers are its own too (child supervisors: no process needed).
        import asyncio

        from otpy.node.supervisor import Supervisor

        async def first_incarnations() -> list[int | None]:
            spec = SupervisorSpec(id="root", children=(SupervisorSpec(id="x"), SupervisorSpec(id="y")))
            root = Supervisor(spec, processes=None, report=lambda event: None)
            await root.start()
            numbers = [c.incarnation for c in root.machine.children.values()]
            await root.stop()
            return numbers

        assert asyncio.run(first_incarnations()) == asyncio.run(first_incarnations()) == [1, 2]
