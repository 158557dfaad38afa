"""A private PostgreSQL server for the tests: a temporary folder, an unprivileged user, a free port.

Debian's packages (``apt-get install postgresql``; ``.ci/run`` installs them) give the
binaries; the server is never the system's own cluster. Run as root (CI), the server runs as
the ``postgres`` user (PostgreSQL refuses to run as root); otherwise as the current user::

    server = PostgresServer.start()          # initdb + pg_ctl start, ~1-2 s
    url = server.new_database()              # postgresql://otpy:...@127.0.0.1:PORT/t_...
    server.restart()                         # the same folder, port and databases
    server.stop()                            # and the folder is removed

``python tests/postgres_server.py start`` prints ``URL PID_FILE FOLDER`` and leaves the
server running (``.ci/run`` exports the URL as ``OTPY_TEST_POSTGRES`` so the whole suite
shares one server); ``python tests/postgres_server.py stop FOLDER`` stops it.
``netns``: run the server inside that network namespace (``ip netns exec``), listening on
``host``.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

USER = "otpy"
TEST_SERVER_ENV = "OTPY_TEST_POSTGRES"  # a server's admin URL (database "postgres"), shared by the suite


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL binaries on this machine: the message says how to install them."""


def binaries() -> Path:
    """The folder with ``initdb``, ``pg_ctl`` and ``postgres``."""
    for folder in [os.environ.get("OTPY_PG_BIN", ""), *sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]:
        if folder and os.path.exists(os.path.join(folder, "pg_ctl")):
            return Path(folder)
    if found := shutil.which("pg_ctl"):
        return Path(os.path.realpath(found)).parent
    raise PostgresUnavailable("PostgreSQL's server binaries (initdb, pg_ctl) are not installed: "
                              "apt-get install -y postgresql (.ci/run does), or set OTPY_PG_BIN")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class PostgresServer:
    def __init__(self, folder: Path, host: str, port: int, password: str, netns: str | None, owner: str | None):
        self.folder, self.host, self.port, self.password = folder, host, port, password
        self.netns, self.owner = netns, owner

    # --- life ----------------------------------------------------------------------------

    @classmethod
    def start(cls, host: str = "127.0.0.1", port: int | None = None, netns: str | None = None,
              listen: str | None = None) -> "PostgresServer":
        bin_dir = binaries()
        owner = "postgres" if os.geteuid() == 0 else None
        folder = Path(tempfile.mkdtemp(prefix="otpy-pg-"))
        password = secrets.token_hex(12)
        server = cls(folder, host, port or free_port(host if netns is None else "127.0.0.1"), password, netns, owner)
        data = folder / "data"
        pwfile = folder / "pw"
        pwfile.write_text(password)
        if owner:
            info = pwd.getpwnam(owner)
            os.chown(folder, info.pw_uid, info.pw_gid)
            os.chown(pwfile, info.pw_uid, info.pw_gid)
        os.chmod(folder, 0o700)
        server._run([str(bin_dir / "initdb"), "-D", str(data), "-U", USER, "-A", "scram-sha-256",
                     f"--pwfile={pwfile}", "-E", "UTF8", "--no-sync"])
        with open(data / "postgresql.conf", "a") as conf:
            conf.write(f"\nlisten_addresses = '{listen or host}'\nport = {server.port}\n"
                       f"unix_socket_directories = '{folder}'\nmax_connections = 1000\n"
                       "fsync = on\nsynchronous_commit = on\nshared_buffers = 32MB\n")
        with open(data / "pg_hba.conf", "w") as hba:
            hba.write("local all all scram-sha-256\nhost all all 0.0.0.0/0 scram-sha-256\n")
        server._pg_ctl("start")
        return server

    def _run(self, argv: list[str], check: bool = True) -> subprocess.CompletedProcess:
        user = self.owner
        if self.netns:  # enter the namespace as root (ip netns exec needs it), then become the owner
            become = ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups"] if user else []
            argv, user = ["ip", "netns", "exec", self.netns, *become, *argv], None
        return subprocess.run(argv, user=user, capture_output=True, text=True, check=check,
                              cwd=self.folder, timeout=60)

    def _pg_ctl(self, action: str) -> None:
        argv = [str(binaries() / "pg_ctl"), "-D", str(self.folder / "data"), "-w", "-t", "30",
                "-l", str(self.folder / "server.log")]
        argv += {"start": ["start"], "stop": ["stop", "-m", "fast"], "kill": ["stop", "-m", "immediate"]}[action]
        done = self._run(argv, check=False)
        if done.returncode != 0:
            log = (self.folder / "server.log").read_text(errors="replace")[-2000:] \
                if (self.folder / "server.log").exists() else ""
            raise RuntimeError(f"pg_ctl {action}: {done.stdout}{done.stderr}\n{log}")

    def stop(self, remove: bool = True) -> None:
        self._pg_ctl("stop")
        if remove:
            shutil.rmtree(self.folder, ignore_errors=True)

    def restart(self, immediate: bool = False) -> None:
        """Stop (``immediate``: as a crash, no checkpoint) and start again on the same port."""
        self._pg_ctl("kill" if immediate else "stop")
        self._pg_ctl("start")

    def pause(self, immediate: bool = True) -> None:
        self._pg_ctl("kill" if immediate else "stop")

    def resume(self) -> None:
        self._pg_ctl("start")

    # --- databases -------------------------------------------------------------------------

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}:{self.password}@{self.host}:{self.port}/{database}"

    def new_database(self, prefix: str = "t") -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        create_database(self.url(), name)
        return self.url(name)


def create_database(admin_url: str, name: str) -> None:
    import psycopg

    deadline = time.monotonic() + 30
    while True:
        try:
            with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as db:
                db.execute(f'CREATE DATABASE "{name}"')
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)  # the server is still starting: a bounded retry, not a wait for an event


def database_on(admin_url: str, prefix: str = "t") -> str:
    """A new database on the server of ``admin_url``: its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    create_database(admin_url, name)
    return admin_url.rsplit("/", 1)[0] + "/" + name


def main(argv: list[str]) -> int:
    if argv[:1] == ["start"]:
        server = PostgresServer.start()
        print(server.url(), server.folder)
        return 0
    if argv[:1] == ["stop"] and len(argv) == 2:
        folder = Path(argv[1])
        owner = "postgres" if os.geteuid() == 0 else None
        subprocess.run([str(binaries() / "pg_ctl"), "-D", str(folder / "data"), "-w", "stop", "-m", "fast"],
                       user=owner, capture_output=True, check=False, cwd=folder, timeout=60)
        shutil.rmtree(folder, ignore_errors=True)
        return 0
    print("usage: postgres_server.py start | stop FOLDER", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
