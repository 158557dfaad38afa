"""A lab of two or three "hosts" on one machine: network namespaces joined by veth pairs.

Each host is a network namespace with its loopback up and one private address on a subnet of
the lab's own; a hub namespace holds a bridge that every host's veth pair plugs into, so the
machine's own namespace gets no interface, no address and no route. Nothing outside the lab's
namespaces is ever addressed. Needs root (CI runs as root) and iproute2's ``ip``::

    with Lab(["alpha", "beta"]) as lab:
        lab.address("beta")                                   # '10.77.N.12'
        lab.run("alpha", ["otpy", "status", "--endpoint", f"tcp://{lab.address('beta')}:7400", ...])
        proc = lab.popen("beta", [sys.executable, "-m", "otpy", "start", "t.toml"])
        server = lab.postgres("alpha")                        # PostgreSQL inside alpha, on its address

Every host has folders of its own (``OTPY_RUNTIME_DIR``, ``XDG_STATE_HOME``, ``XDG_DATA_HOME``
under ``lab.folder/HOST``): two hosts are two separate node folders, as two machines would be.
On exit (``with``, ``close()``, or atexit after a failure) every process left in the lab's
namespaces is stopped (SIGTERM, then SIGKILL), the namespaces are deleted (their interfaces
with them) and the folders removed. Namespace names carry the creating process's pid, so a lab
left by a killed run is swept by the next one.

Setup is cheap: 40-130 ms for three hosts on this 2-core VM (``lab.setup_seconds``;
``python -m bench.cluster`` prints it), teardown 0.1 s plus the processes' own stop, so a test
module may take a lab per test; the costs are the nodes started in it.

``python -m tests.netns_lab shell --watch $$ HOST...`` builds a lab for a shell session (docs/cluster.md):
it prints shell code to ``eval`` that defines ``on HOST CMD...`` (the command run in that host,
with its folders), ``$ALPHA``-style variables holding each host's address, and leaves a guardian
process that removes the lab when the shell exits.
"""

from __future__ import annotations

import atexit
import itertools
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

PREFIX = "otpylab"
ROOT = str(Path(__file__).resolve().parent.parent)
FOLDER_VARIABLES = {"OTPY_RUNTIME_DIR": "run", "XDG_STATE_HOME": "state", "XDG_DATA_HOME": "data"}
_counter = itertools.count(1)


class LabUnavailable(RuntimeError):
    """This machine cannot host a lab (not root, no ``ip``, no namespaces): the message says why."""


def unavailable_reason() -> str | None:
    """Why a lab cannot be built here, or None."""
    if not sys.platform.startswith("linux"):
        return "network namespaces are Linux only"
    if os.geteuid() != 0:
        return "network namespaces need root (CI runs as root)"
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed (apt-get install -y iproute2; .ci/run does)"
    return None


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise LabUnavailable(f"ip {' '.join(args)}: {done.stderr.strip() or done.returncode}")
    return done


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def namespaces() -> list[str]:
    listed = _ip("netns", "list", check=False).stdout
    return [line.split()[0] for line in listed.splitlines() if line.strip()]


def sweep_stale() -> list[str]:
    """Delete the lab namespaces whose creating process is gone (a run killed before its cleanup)."""
    swept = []
    for name in namespaces():
        parts = name.split("-")
        if len(parts) >= 3 and parts[0] == PREFIX and parts[1].isdigit() and not _pid_alive(int(parts[1])):
            _stop_processes([name], grace=0.5)
            _ip("netns", "del", name, check=False)
            swept.append(name)
    return swept


def _netns_pids(netns: str) -> list[int]:
    done = _ip("netns", "pids", netns, check=False)
    return [int(p) for p in done.stdout.split() if p.isdigit() and int(p) != os.getpid()]


def _stop_processes(netnses: list[str], grace: float = 3.0) -> None:
    """SIGTERM every process in these namespaces, then SIGKILL whatever is left after ``grace`` s."""
    def pids() -> list[int]:
        return [p for ns in netnses for p in _netns_pids(ns)]

    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 2.0)):
        found = pids()
        if not found:
            return
        for pid in found:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and pids():
            time.sleep(0.05)


@dataclass
class Host:
    name: str
    netns: str
    address: str
    folder: Path
    env: dict[str, str] = field(default_factory=dict)  # its folders' variables


class Lab:
    """``hosts`` (2 or 3 names): the lab's hosts, built on ``start()`` / ``with``."""

    def __init__(self, hosts: list[str] | tuple[str, ...] = ("alpha", "beta"), subnet: int | None = None):
        if not 1 <= len(hosts) <= 8 or len(set(hosts)) != len(hosts):
            raise ValueError("a lab has 1 to 8 hosts of distinct names")
        number = next(_counter)
        self.tag = f"{PREFIX}-{os.getpid()}-{number}"
        # Each lab's namespaces are a network of their own, so two labs never see each other's
        # addresses anyway; a subnet per lab keeps the addresses of two test workers apart in logs.
        self.subnet = subnet if subnet is not None else 1 + (os.getpid() * 7 + number) % 250
        self.hub = f"{self.tag}-hub"
        self.folder = Path(tempfile.mkdtemp(prefix="otpy-lab-"))
        self.hosts: dict[str, Host] = {}
        for index, name in enumerate(hosts):
            folder = self.folder / name
            env = {}
            for variable, sub in FOLDER_VARIABLES.items():
                (folder / sub).mkdir(parents=True, mode=0o700)
                env[variable] = str(folder / sub)
            self.hosts[name] = Host(name, f"{self.tag}-{name}", f"10.77.{self.subnet}.{11 + index}", folder, env)
        self._made: list[str] = []
        self._servers: list = []
        self.setup_seconds: float | None = None
        self._closed = False

    # --- life ------------------------------------------------------------------------------

    def start(self) -> "Lab":
        if reason := unavailable_reason():
            raise LabUnavailable(reason)
        began = time.perf_counter()
        atexit.register(self.close)
        sweep_stale()
        try:
            self._add_netns(self.hub)
            _ip("-n", self.hub, "link", "add", "br0", "type", "bridge")
            _ip("-n", self.hub, "link", "set", "br0", "up")
            for index, host in enumerate(self.hosts.values()):
                self._add_netns(host.netns)
                port = f"p{index}"
                _ip("-n", self.hub, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", host.netns)
                _ip("-n", self.hub, "link", "set", port, "master", "br0")
                _ip("-n", self.hub, "link", "set", port, "up")
                _ip("-n", host.netns, "addr", "add", f"{host.address}/24", "dev", "eth0")
                _ip("-n", host.netns, "link", "set", "eth0", "up")
            self._wait_reachable()
        except BaseException:
            self.close()
            raise
        self.setup_seconds = time.perf_counter() - began
        return self

    def _add_netns(self, name: str) -> None:
        _ip("netns", "add", name)
        self._made.append(name)
        _ip("-n", name, "link", "set", "lo", "up")

    def _wait_reachable(self, timeout: float = 10.0) -> None:
        """Until every host's address is usable (no longer tentative: duplicate address detection
        is IPv6's only, but the link's carrier comes up asynchronously)."""
        deadline = time.monotonic() + timeout
        for host in self.hosts.values():
            while True:
                state = _ip("-n", host.netns, "-o", "link", "show", "eth0").stdout
                if "LOWER_UP" in state and "state UP" in state:
                    break
                if time.monotonic() > deadline:
                    raise LabUnavailable(f"{host.name}'s eth0 did not come up: {state.strip()}")
                time.sleep(0.01)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for server in self._servers:
            try:
                server.stop()
            except Exception:  # noqa: BLE001 - the namespace goes anyway; keep cleaning
                pass
        _stop_processes(self._made)
        for name in reversed(self._made):
            _ip("netns", "del", name, check=False)
        shutil.rmtree(self.folder, ignore_errors=True)
        atexit.unregister(self.close)

    def __enter__(self) -> "Lab":
        return self if self.setup_seconds is not None else self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # --- using it --------------------------------------------------------------------------

    def address(self, host: str) -> str:
        return self.hosts[host].address

    def netns(self, host: str) -> str:
        return self.hosts[host].netns

    def env(self, host: str, env: dict[str, str] | None = None) -> dict[str, str]:
        """The environment of a process on ``host``: this one's, the host's folders, then ``env``."""
        merged = dict(os.environ)
        merged.pop("OTPY_DATA_DIR", None)
        merged.update(self.hosts[host].env)
        merged.update(env or {})
        return merged

    def argv(self, host: str, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.hosts[host].netns, *argv]

    def run(self, host: str, argv: list[str], env: dict[str, str] | None = None, timeout: float = 60,
            **kwargs) -> subprocess.CompletedProcess:
        """``argv`` run to its end inside ``host``: stdout and stderr captured as text."""
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        return subprocess.run(self.argv(host, argv), env=self.env(host, env), timeout=timeout, **kwargs)

    def popen(self, host: str, argv: list[str], env: dict[str, str] | None = None, **kwargs) -> subprocess.Popen:
        return subprocess.Popen(self.argv(host, argv), env=self.env(host, env), **kwargs)

    def disconnect(self, host: str) -> None:
        """Cut ``host`` off the lab's network (its link down: a partition; its processes run on)."""
        _ip("-n", self.hosts[host].netns, "link", "set", "eth0", "down")

    def reconnect(self, host: str) -> None:
        _ip("-n", self.hosts[host].netns, "link", "set", "eth0", "up")
        self._wait_reachable()

    def postgres(self, host: str, port: int = 5432):
        """A PostgreSQL server of its own inside ``host``, listening on its address (stopped on close)."""
        from tests.postgres_server import PostgresServer

        server = PostgresServer.start(netns=self.hosts[host].netns, host=self.hosts[host].address, port=port)
        self._servers.append(server)
        server.lab_host = host
        return server

    def new_database(self, server, prefix: str = "t") -> str:
        """A new database on ``server`` (made from inside its host: the machine's own namespace
        never addresses the lab): its URL."""
        code = ("import sys; sys.path.insert(0, %r); from tests.postgres_server import database_on;"
                "print(database_on(sys.argv[1], sys.argv[2]))" % ROOT)
        done = self.run(server.lab_host, [sys.executable, "-c", code, server.url(), prefix])
        if done.returncode != 0:
            raise RuntimeError(f"no new database on {server.lab_host}: {done.stderr[-1000:]}")
        return done.stdout.strip()


def lab_or_skip(hosts=("alpha", "beta")) -> Lab:
    """For a pytest fixture: a started lab; skipped with the reason on a machine that cannot host
    one, except in CI (``CI`` set), where that is a failure."""
    if (reason := unavailable_reason()) and not os.environ.get("CI"):
        import pytest

        pytest.skip(reason)
    return Lab(list(hosts)).start()


# --- a lab for a shell session -------------------------------------------------------------------

def shell_code(lab: Lab) -> str:
    lines = ["on() {", '  local host="$1"; shift', '  case "$host" in']
    for host in lab.hosts.values():
        assignments = " ".join(f"{k}={shlex.quote(v)}" for k, v in host.env.items())
        lines.append(f"    {host.name}) env {assignments} ip netns exec {host.netns} \"$@\" ;;")
    lines += ['    *) echo "on: no host $host" >&2; return 2 ;;', "  esac", "}"]
    for host in lab.hosts.values():
        lines.append(f"export {host.name.upper()}={host.address}")
        for k, v in host.env.items():
            lines.append(f"export {host.name.upper()}_{k}={shlex.quote(v)}")
    lines.append(f"export OTPY_LAB_FOLDER={shlex.quote(str(lab.folder))} OTPY_LAB_TAG={lab.tag}")
    return "\n".join(lines) + "\n"


def _guard(lab: Lab, watched: int) -> None:
    """In a process of its own: remove ``lab`` once ``watched`` (the shell) has exited."""
    os.setsid()
    for fd in (0, 1, 2):
        os.dup2(os.open(os.devnull, os.O_RDWR), fd)
    try:
        pidfd = os.pidfd_open(watched)
        import select

        select.select([pidfd], [], [])
    except (OSError, AttributeError):
        while _pid_alive(watched):
            time.sleep(0.2)
    lab.close()
    os._exit(0)


FILE_MARK = "<!-- file: "


def write_page_files(page: str, into: str) -> list[str]:
    """Each fenced block of ``page`` right after a ``<!-- file: PATH -->`` line, written to
    ``into/PATH`` (a page shows the files its session uses, and they are the same)."""
    lines = Path(page).read_text().splitlines()
    written = []
    for index, line in enumerate(lines):
        if line.strip().startswith(FILE_MARK) and index + 1 < len(lines) and lines[index + 1].startswith("```"):
            path = line.strip()[len(FILE_MARK):].removesuffix("-->").strip()
            end = next(i for i in range(index + 2, len(lines)) if lines[i].strip() == "```")
            target = Path(into) / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text("\n".join(lines[index + 2:end]) + "\n")
            written.append(path)
    return written


USAGE = ("usage: python -m tests.netns_lab files PAGE.md DIR   (writes the page's <!-- file: PATH --> blocks)\n"
         "       python -m tests.netns_lab shell --watch PID [--subnet N] [--postgres HOST] HOST [HOST...]\n"
         "  prints shell code to eval (on HOST CMD..., $HOST addresses); the lab is removed once PID, the shell,\n"
         "  has exited. --postgres HOST: a PostgreSQL server inside HOST with a database 'otpy', reached as\n"
         "  $OTPY_LAB_DB (no password in it: PGPASSWORD is exported, as libpq reads it)")


def main(argv: list[str]) -> int:
    import argparse

    if argv[:1] == ["files"] and len(argv) == 3:
        print("\n".join(write_page_files(argv[1], argv[2])))
        return 0
    parser = argparse.ArgumentParser(usage=USAGE, add_help=False)
    parser.add_argument("command", choices=["shell"])
    parser.add_argument("--watch", type=int, required=True)
    parser.add_argument("--subnet", type=int)
    parser.add_argument("--postgres")
    parser.add_argument("hosts", nargs="+")
    try:
        args = parser.parse_args(argv)
    except SystemExit:
        return 2
    if reason := unavailable_reason():
        print(f"echo {shlex.quote('no lab: ' + reason)}; (exit 77)")
        return 0
    # The guardian builds the lab, so that the namespaces carry ITS pid: it lives as long as the
    # lab, and another lab's sweep (creator gone = stale) leaves this one alone.
    readable, writable = os.pipe()
    sys.stdout.flush()
    if os.fork() == 0:
        os.close(readable)
        try:
            lab, code = _shell_lab(args)
        except BaseException as exc:  # noqa: BLE001 - said to the shell, which fails the setup
            os.write(writable, f"echo {shlex.quote('no lab: ' + str(exc)[-2000:])} >&2; (exit 1)\n".encode())
            os._exit(1)
        os.write(writable, code.encode())
        os.close(writable)
        _guard(lab, args.watch)
    os.close(writable)
    with os.fdopen(readable) as said:
        sys.stdout.write(said.read())
    return 0


def _shell_lab(args) -> tuple[Lab, str]:
    lab = Lab(args.hosts, subnet=args.subnet)
    lab.start()
    atexit.unregister(lab.close)  # the guardian closes it (_guard)
    code = shell_code(lab)
    if args.postgres:
        try:
            server = lab.postgres(args.postgres)
            from tests.postgres_server import USER

            code_db = ("import sys; sys.path.insert(0, %r); from tests.postgres_server import create_database;"
                       "create_database(sys.argv[1], 'otpy')" % ROOT)
            done = lab.run(args.postgres, [sys.executable, "-c", code_db, server.url()])
            if done.returncode != 0:
                raise RuntimeError(done.stderr[-2000:])
        except BaseException:
            lab.close()
            raise
        code += (f"export PGPASSWORD={shlex.quote(server.password)} "
                 f"OTPY_LAB_DB=postgresql://{USER}@{server.host}:{server.port}/otpy\n")
    return lab, code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
