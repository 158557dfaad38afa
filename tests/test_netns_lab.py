"""The network-namespace lab itself (tests/netns_lab.py): hosts reach each other's addresses and
nothing of the machine's own network; every host has folders of its own; a lab leaves nothing
behind, after a failure too, and a lab left by a killed process is swept by the next one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from tests.netns_lab import PREFIX, Lab, lab_or_skip, namespaces, sweep_stale, unavailable_reason

pytestmark = pytest.mark.timeout(60)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def lab():
    with lab_or_skip(("alpha", "beta", "gamma")) as made:
        yield made


def mine(lab: Lab) -> list[str]:
    return [name for name in namespaces() if name.startswith(lab.tag + "-")]


def python_in(lab: Lab, host: str, code: str, **kw) -> subprocess.CompletedProcess:
    return lab.run(host, [sys.executable, "-c", code], **kw)


def test_each_host_reaches_the_others_by_their_addresses_and_has_only_loopback_and_its_own(lab):
    listener = lab.popen("beta", [sys.executable, "-c",
                                  "import socket; s = socket.socket(); s.bind(('0.0.0.0', 7000)); s.listen();"
                                  "print('up', flush=True); c, _ = s.accept(); c.sendall(b'from beta')"],
                         stdout=subprocess.PIPE, text=True)
    assert listener.stdout.readline() == "up\n"
    got = python_in(lab, "alpha", f"import socket; print(socket.create_connection(('{lab.address('beta')}', 7000),"
                                  " timeout=5).recv(100).decode())")
    assert got.stdout == "from beta\n", got.stderr
    listener.wait(10)
    assert len({lab.address(h) for h in lab.hosts}) == 3
    addresses = lab.run("gamma", ["ip", "-4", "-o", "addr"]).stdout
    assert [line.split()[3] for line in addresses.splitlines()] == ["127.0.0.1/8", lab.address("gamma") + "/24"]
    routes = lab.run("gamma", ["ip", "-4", "route"]).stdout
    assert "default" not in routes  # the machine's network (and beyond) is not reachable from a host


def test_the_machines_own_namespace_gets_no_interface(lab):
    own = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert "p0" not in own.split() and lab.address("alpha") not in subprocess.run(
        ["ip", "-o", "addr"], capture_output=True, text=True).stdout


def test_each_host_has_folders_of_its_own(lab):
    code = "import os; print(os.environ['OTPY_RUNTIME_DIR'], os.environ['XDG_STATE_HOME'], os.environ['XDG_DATA_HOME'])"
    alpha, beta = (python_in(lab, h, code).stdout.split() for h in ("alpha", "beta"))
    assert not set(alpha) & set(beta)
    assert all(path.startswith(str(lab.folder / "alpha")) and os.path.isdir(path) for path in alpha)
    assert python_in(lab, "alpha", code, env={"XDG_DATA_HOME": "/x"}).stdout.split()[2] == "/x"


def test_a_lab_leaves_nothing_behind_even_after_a_failure():
    with pytest.raises(ZeroDivisionError):
        with lab_or_skip() as lab:
            sleeper = lab.popen("alpha", ["sleep", "60"])
            assert len(mine(lab)) == 3  # hub, alpha, beta
            1 / 0
    assert mine(lab) == [] and not lab.folder.exists()
    assert sleeper.wait(10) == -signal.SIGTERM  # the processes left in the hosts are stopped


def test_a_lab_left_by_a_killed_process_is_swept():
    if (reason := unavailable_reason()) and not os.environ.get("CI"):
        pytest.skip(reason)
    code = ("import os, sys; sys.path.insert(0, %r); from tests.netns_lab import Lab; lab = Lab().start();"
            "print(lab.tag, flush=True); os.kill(os.getpid(), 9)" % ROOT)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    tag = done.stdout.strip()
    assert tag.startswith(PREFIX + "-") and [n for n in namespaces() if n.startswith(tag + "-")], done.stderr
    sweep_stale()
    assert [n for n in namespaces() if n.startswith(tag + "-")] == []


def test_a_postgres_server_inside_a_host_answers_another_host_on_its_address(lab):
    server = lab.postgres("beta")
    url = lab.new_database(server)
    assert url.startswith(f"postgresql://otpy:{server.password}@{lab.address('beta')}:5432/t_")
    query = f"import psycopg; print(psycopg.connect({url!r}, connect_timeout=5).execute('select 1').fetchone())"
    got = python_in(lab, "alpha", query)
    assert got.stdout == "(1,)\n", got.stderr


def test_the_shell_form_defines_on_and_removes_the_lab_when_the_shell_exits():
    if (reason := unavailable_reason()) and not os.environ.get("CI"):
        pytest.skip(reason)
    script = ('eval "$(python -m tests.netns_lab shell --watch $$ --subnet 0 --postgres beta alpha beta)"\n'
              'on beta python -c "import os; print(os.environ[\'OTPY_RUNTIME_DIR\'])"\n'
              'on alpha ip -4 -o addr | grep -c "$ALPHA/24"\necho "$OTPY_LAB_FOLDER"\necho "$OTPY_LAB_TAG"\n'
              'on gamma true; echo "exit $?"\n'
              'echo "$OTPY_LAB_DB"\n'
              't=${OTPY_LAB_TAG#otpylab-}; kill -0 "${t%-*}" && echo "creator alive"\n'
              'on alpha python -c "import os, psycopg; print(psycopg.connect(os.environ[\'OTPY_LAB_DB\'], connect_timeout=5)'
              '.execute(\'select current_database()\').fetchone()[0])"\n')
    done = subprocess.run(["bash", "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=30,
                          env=dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]))
    runtime, count, folder, tag, status, database, alive, answer = done.stdout.splitlines()
    assert alive == "creator alive"  # the names carry the guardian's pid: no other lab's sweep takes them
    assert database == "postgresql://otpy@10.77.0.12:5432/otpy" and answer == "otpy", done.stderr  # PGPASSWORD
    assert runtime == f"{folder}/beta/run" and count == "1" and status == "exit 2", done.stderr
    assert "on: no host gamma" in done.stderr
    from tests.helpers import wait_until

    wait_until(lambda: not os.path.exists(folder), timeout=15, what="the guardian removed the lab")
    assert tag.startswith(PREFIX) and not [n for n in namespaces() if n.startswith(tag + "-")]


@pytest.mark.timeout(180)
def test_bench_cluster_measures_across_the_lab(tmp_path):
    """bench/cluster.py end to end, small: every series and target is in its report."""
    if (reason := unavailable_reason()) and not os.environ.get("CI"):
        pytest.skip(reason)
    report = tmp_path / "cluster.json"
    before = set(namespaces())
    done = subprocess.run([sys.executable, "-m", "bench.cluster", "--n", "50", "--writes", "10", "--no-optimize",
                           "--json", str(report)], cwd=ROOT, capture_output=True, text=True, timeout=170)
    assert done.returncode == 0, done.stderr[-3000:]
    import json

    made = json.loads(report.read_text())
    assert set(made["series"]) == {"raw_tcp", "raw_curve", "remote_call", "local_call", "registry_remote",
                                   "registry_floor"}
    assert all(made["series"][name]["n"] == 50 for name in ("raw_tcp", "raw_curve", "remote_call", "local_call"))
    assert made["series"]["registry_remote"]["n"] == 10
    assert set(made["targets"]) == {"remote_call_p50_vs_local_x", "remote_call_p50_vs_raw_curve_x",
                                    "registry_remote_p50_ms"}
    assert "remote_call" in done.stdout and "target <= 50" in done.stdout
    from tests.netns_lab import _pid_alive

    left = [n for n in set(namespaces()) - before if n.startswith(PREFIX) and not _pid_alive(int(n.split("-")[1]))]
    assert not left  # its lab is gone (another test worker's live lab may be there meanwhile)
