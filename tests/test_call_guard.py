"""The call guard (``otpy.agent.call_guard.RunGuard``), without sockets: with ``concurrency = 1``
the call loop's thread runs each call itself; the guard serves the socket while one lasts, and
hands it back when the call returns."""

from __future__ import annotations

import os
import select
import threading

from otpy.agent.call_guard import RunGuard


class Recorder:
    """A guard's ``serve``: notes that it holds the socket, then waits for ``give_back``."""

    def __init__(self) -> None:
        self.serving = threading.Event()
        self.sessions = 0

    def __call__(self, give_back: int) -> None:
        self.sessions += 1
        self.serving.set()
        select.select([give_back], [], [], 30)
        os.eventfd_read(give_back)


def test_a_long_call_has_its_socket_served_and_gets_it_back():
    recorder = Recorder()
    guard = RunGuard(recorder)
    guard.start()
    guard.begin()
    assert recorder.serving.wait(10), "the guard never served the socket during a long call"
    assert guard.socket.locked()  # the guard holds it
    guard.end()  # hands it back: returns only once the guard let go
    assert guard.socket.locked() and recorder.sessions == 1
    # the socket is the loop's again: the guard waits for the next call
    guard.begin()
    assert recorder.serving.wait(10)
    guard.end()


def test_short_calls_keep_the_socket_on_the_loops_thread():
    recorder = Recorder()
    guard = RunGuard(recorder)
    guard.start()
    for _ in range(1000):  # each far shorter than a tick
        guard.begin()
        guard.end()
        assert guard.socket.locked()
    assert recorder.sessions == 0


def test_a_parked_guard_wakes_for_the_next_long_call():
    recorder = Recorder()
    guard = RunGuard(recorder)
    guard.start()
    guard.begin()
    guard.end()
    deadline = threading.Event()
    for _ in range(2000):  # until it parks (no call for PARK_AFTER_TICKS ticks)
        if guard.parked:
            break
        deadline.wait(0.005)
    assert guard.parked
    guard.begin()
    assert not guard.parked
    assert recorder.serving.wait(10), "a parked guard missed the next long call"
    guard.end()


def test_while_a_long_call_runs_the_agent_still_takes_sigterm_at_once(tmp_path):  # (a Python-level wait)
    """With ``concurrency = 1`` the call runs on the loop's own thread: the guard sends the drain
    notice and answers ``draining`` while it runs (before: a call thread ran it)."""
    import signal

    import msgspec
    import zmq

    import otpy
    from otpy.host.runtime_dir import agent_endpoint
    from otpy.wire.protocol import DRAIN_NOTICE, ENCODER, FROM_AGENT, Call, CallFailed, Reply
    from tests.helpers import unique_name, wait_until

    root = otpy.SupervisorSpec(id="root", children=(otpy.ChildSpec(id="gate", program="tests.call_guard_agents:Gate"),))
    node = otpy.Node.from_spec(root, name=unique_name("guard")).start()
    context = zmq.Context()
    dealer = context.socket(zmq.DEALER)
    dealer.linger = 0
    mark, release, answers = tmp_path / "running", tmp_path / "release", []
    try:
        dealer.connect(agent_endpoint(node.name, "gate"))
        dealer.send(ENCODER.encode(Call(call_id=1, inputs={"x": 1})))
        assert dealer.poll(10_000) and isinstance(FROM_AGENT.decode(dealer.recv()), Reply)  # a caller it knows

        def call_long():
            with otpy.Caller(node.name) as caller:
                answers.append(caller.call("gate", {"mark": str(mark), "release": str(release)}, timeout=25))

        thread = threading.Thread(target=call_long)
        thread.start()
        pid = wait_until(lambda: mark.exists() and int(mark.read_text() or 0), timeout=10, what="the long call")
        os.kill(pid, signal.SIGTERM)
        assert dealer.poll(10_000), "no drain notice while the call ran"
        notice = FROM_AGENT.decode(dealer.recv())
        assert isinstance(notice, CallFailed) and notice.call_id == DRAIN_NOTICE and notice.kind == "draining"
        dealer.send(ENCODER.encode(Call(call_id=2, inputs={"x": 2})))
        assert dealer.poll(10_000), "a new call was not answered while the long call ran"
        refused = FROM_AGENT.decode(dealer.recv())
        assert isinstance(refused, CallFailed) and refused.call_id == 2 and refused.kind == "draining"
        assert not release.exists() and not answers  # all that while the long call ran
        release.touch()
        thread.join(25)
        assert answers and answers[0]["pid"] == pid  # the call it took was answered
    finally:
        release.touch()
        dealer.close()
        context.term()
        node.stop()


def test_while_a_long_call_runs_a_full_agent_answers_overloaded(tmp_path):
    """``max_queue = 0``: a call made while the one call it holds runs is refused then, not
    taken once the running call returns."""
    import otpy
    from otpy.wire.errors import Overloaded
    from tests.helpers import unique_name, wait_until

    root = otpy.SupervisorSpec(id="root", children=(
        otpy.ChildSpec(id="gate", program="tests.call_guard_agents:Gate", args={"max_queue": 0}),))
    node = otpy.Node.from_spec(root, name=unique_name("guard")).start()
    mark, release, answers = tmp_path / "running", tmp_path / "release", []
    try:
        with otpy.Caller(node.name) as caller:
            running = caller.submit("gate", {"mark": str(mark), "release": str(release)}, timeout=25)
            wait_until(mark.exists, timeout=10, what="the long call")
            try:
                caller.call("gate", {"x": 2}, timeout=20)
            except Overloaded:
                answers.append("overloaded")
            assert answers == ["overloaded"] and not release.exists() and not running.done()
            release.touch()
            assert "pid" in running.result(25)
    finally:
        release.touch()
        node.stop()


def test_with_concurrency_one_on_config_runs_on_the_loops_thread_in_turn_with_the_calls():
    """``new_config`` queues ``on_config`` behind the calls taken; the loop's thread runs it (so
    never while a call runs) and then ``done``."""
    import zmq

    from otpy.agent.call_server import CallServer
    from otpy.agent.shutdown import Shutdown
    from tests.helpers import unique_name

    class Recorder:
        def __init__(self) -> None:
            self.threads: list[str] = []

        def forward(self, **inputs):
            return inputs

        def on_config(self, config):
            self.threads.append(threading.current_thread().name)

    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    router.bind(f"inproc://{unique_name('server')}")
    program, shutdown, done = Recorder(), Shutdown(), threading.Event()
    server = CallServer(program, context, router, shutdown, concurrency=1, max_queue=1)
    loop = threading.Thread(target=server.serve, name="the-loop")
    try:
        loop.start()
        server.new_config({"temperature": 0.3}, lambda config, refused: done.set())
        assert done.wait(10)
        assert program.threads == ["the-loop"] and server.taken == 0
    finally:
        shutdown.request_config_restart()
        loop.join(10)
        router.close(linger=0)
        context.term()


def test_with_concurrency_one_every_call_runs_on_the_thread_that_ran_setup_even_when_many_wait():
    """However many calls wait, they run in arrival order, never two at once, and all on the
    agent's main thread, the one that ran ``setup`` (a sqlite3 connection or a
    ``threading.local`` made there keeps working under load; before, from 8 waiting calls on
    the queue went to a call thread)."""
    import otpy
    from tests.helpers import unique_name

    root = otpy.SupervisorSpec(id="root", children=(otpy.ChildSpec(id="timed", program="tests.call_guard_agents:Timed"),))
    node = otpy.Node.from_spec(root, name=unique_name("guard")).start()
    try:
        with otpy.Caller(node.name) as caller:
            futures = [caller.submit("timed", {"seconds": 0.02, "i": i}, timeout=20) for i in range(24)]
            results = [future.result(30) for future in futures]
    finally:
        node.stop()
    assert [r["i"] for r in results] == list(range(24))
    assert all(a["end"] <= b["start"] for a, b in zip(results, results[1:]))
    assert all(r["setup_thread"] for r in results), {r["thread"] for r in results}


def _long_call_then_signal(tmp_path, sig, program, long_inputs, release, *, args=None):
    """A caller the agent knows (``dealer``), then a long call; ``sig`` sent while it runs: the
    agent must send the drain notice and answer a new call ``draining`` while the call still
    runs; ``release()`` ends the call, which is then answered. Returns the long call's answer."""
    import msgspec  # noqa: F401  (the codec's)
    import zmq

    import otpy
    from otpy.host.runtime_dir import agent_endpoint
    from otpy.wire.protocol import DRAIN_NOTICE, ENCODER, FROM_AGENT, Call, CallFailed, Reply
    from tests.helpers import unique_name, wait_until

    root = otpy.SupervisorSpec(id="root", children=(otpy.ChildSpec(id="gate", program=program, args=args or {}),))
    node = otpy.Node.from_spec(root, name=unique_name("guard")).start()
    context = zmq.Context()
    dealer = context.socket(zmq.DEALER)
    dealer.linger = 0
    mark, answers = tmp_path / "running", []
    try:
        dealer.connect(agent_endpoint(node.name, "gate"))
        dealer.send(ENCODER.encode(Call(call_id=1, inputs={"x": 1})))
        assert dealer.poll(10_000) and isinstance(FROM_AGENT.decode(dealer.recv()), Reply)  # a caller it knows

        def call_long():
            with otpy.Caller(node.name) as caller:
                answers.append(caller.call("gate", {"mark": str(mark), **long_inputs}, timeout=25))

        thread = threading.Thread(target=call_long)
        thread.start()
        pid = wait_until(lambda: mark.exists() and int(mark.read_text() or 0), timeout=10, what="the long call")
        os.kill(pid, sig)
        assert dealer.poll(10_000), "no drain notice while the call ran"
        notice = FROM_AGENT.decode(dealer.recv())
        assert isinstance(notice, CallFailed) and notice.call_id == DRAIN_NOTICE and notice.kind == "draining"
        dealer.send(ENCODER.encode(Call(call_id=2, inputs={"x": 2})))
        assert dealer.poll(10_000), "a new call was not answered while the long call ran"
        refused = FROM_AGENT.decode(dealer.recv())
        assert isinstance(refused, CallFailed) and refused.call_id == 2 and refused.kind == "draining"
        assert thread.is_alive() and not answers  # all that while the long call ran
        release()
        thread.join(25)
        assert answers and answers[0]["pid"] == pid  # the call it took was answered
        return answers[0]
    finally:
        release()
        dealer.close()
        context.term()
        node.stop()


def test_a_sigterm_while_the_call_runs_in_c_code_drains_at_once(tmp_path):
    """The call is inside one C call that holds off Python's signal handlers (hashlib, numpy on
    a big buffer): the guard reads the SIGTERM from the wakeup fd and drains now (before, it
    waited for the main thread's handler, which ran only after the call: new calls were taken
    meanwhile and lost at the SIGKILL)."""
    import signal

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)

    def release():
        fd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
        os.write(fd, b"x")
        os.close(fd)

    _long_call_then_signal(tmp_path, signal.SIGTERM, "tests.call_guard_agents:InC", {"fifo": str(fifo)}, release)


def test_a_sigint_while_a_call_runs_drains_like_sigterm(tmp_path):
    """SIGINT is a request to stop, as SIGTERM: the running call ends and is answered (before:
    ``KeyboardInterrupt`` inside ``forward``), the callers get the drain notice, teardown runs."""
    import signal

    from tests.helpers import wait_until

    done, torn_down = tmp_path / "release", tmp_path / "torn_down"
    _long_call_then_signal(tmp_path, signal.SIGINT, "tests.call_guard_agents:TornDown", {"release": str(done)},
                           done.touch, args={"torn_down": str(torn_down)})
    wait_until(torn_down.exists, timeout=10, what="teardown after the SIGINT")


def test_a_sigint_to_an_idle_agent_drains_and_tears_down(tmp_path):
    """The same SIGINT to an agent that runs no call: a drain and ``teardown`` (before: a
    ``KeyboardInterrupt`` crashed it, exit status 1, no teardown)."""
    import signal

    import otpy
    from tests.helpers import unique_name, wait_until

    torn_down = tmp_path / "torn_down"
    root = otpy.SupervisorSpec(id="root", children=(
        otpy.ChildSpec(id="gate", program="tests.call_guard_agents:TornDown", args={"torn_down": str(torn_down)}),))
    node = otpy.Node.from_spec(root, name=unique_name("guard")).start()
    try:
        with otpy.Caller(node.name) as caller:
            pid = caller.call("gate", {"x": 1}, timeout=10)["pid"]
        os.kill(pid, signal.SIGINT)
        assert int(wait_until(lambda: torn_down.exists() and torn_down.read_text(), timeout=10,
                              what="teardown after the SIGINT")) == pid
    finally:
        node.stop()


def test_over_max_rss_the_calls_waiting_behind_are_resent_not_lost(tmp_path):
    """The call that takes the agent over ``max_rss`` is answered, then the agent exits; the
    calls taken and waiting behind it never ran there: they are answered ``draining`` and run
    by the restarted agent (before: ``AgentCrashed``)."""
    import otpy
    from tests.helpers import unique_name, wait_until

    root = otpy.SupervisorSpec(id="root", children=(
        otpy.ChildSpec(id="grows", program="tests.call_guard_agents:Grows", max_rss=80),))
    node = otpy.Node.from_spec(root, name=unique_name("guard")).start()
    mark, release = tmp_path / "running", tmp_path / "release"
    try:
        with otpy.Caller(node.name) as caller:
            big = caller.submit("grows", {"mib": 100, "mark": str(mark), "release": str(release)}, timeout=25)
            pid = int(wait_until(lambda: mark.exists() and mark.read_text(), timeout=10, what="the big call"))
            queued = [caller.submit("grows", {"i": i}, timeout=25) for i in range(5)]
            release.touch()
            assert big.result(25)["pid"] == pid
            answers = [future.result(25) for future in queued]
    finally:
        release.touch()
        node.stop()
    assert [a["i"] for a in answers] == list(range(5)) and all(a["pid"] != pid for a in answers)


def test_over_max_rss_with_variables_the_exit_logs_no_traceback(tmp_path, capfd):
    """The exit over ``max_rss`` ends the context the config watcher's thread polls: the child
    says why it exits, and nothing else (before: a ``ContextTerminated`` traceback)."""
    import otpy
    from tests.helpers import Events, unique_name

    name = unique_name("guard")
    path = tmp_path / "t.toml"
    path.write_text(f'[node]\nname = "{name}"\n[supervisor]\n[[supervisor.children]]\nid = "grows"\n'
                    'program = "tests.call_guard_agents:Grows"\nmax_rss = 80\n'
                    '[variables.global]\nx = { type = "integer", low = 0, high = 9, default = 1 }\n')
    node = otpy.Node.from_toml(path).start()
    events = Events(node)
    try:
        assert "pid" in node.call("grows", {"mib": 100}, timeout=20)
        assert "exit status 76" in events.wait("exited", "grows")["detail"]
        events.wait("started", "grows")
    finally:
        node.stop()
    err = capfd.readouterr().err
    assert "is over max_rss" in err
    assert "Traceback" not in err and "ContextTerminated" not in err, err
