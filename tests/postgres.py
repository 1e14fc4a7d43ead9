"""A real PostgreSQL server on loopback for tests: Debian's binaries (``.ci/run`` installs them),
a throwaway cluster in a temporary folder, trust authentication, stopped afterwards."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.conftest import free_port

DEBIAN_BINS = "/usr/lib/postgresql/*/bin"  # Debian installs each major version beside the others


def _binaries() -> Path:
    versions = sorted(Path("/").glob(DEBIAN_BINS.lstrip("/") + "/initdb"), key=lambda p: int(p.parts[-3]))
    if versions:
        return versions[-1].parent
    found = shutil.which("initdb")
    if found is None:
        raise RuntimeError("PostgreSQL's initdb not found: install Debian's postgresql package (.ci/run does)")
    return Path(found).parent


class PostgresServer:
    """``start()`` a cluster, ``restart()`` it under a running study, ``stop()`` it; ``url`` for SQLAlchemy."""

    def __init__(self) -> None:
        self.bin = _binaries()
        # Not under pytest's tmp_path: the server runs as the postgres user, who cannot enter root's folders.
        self.root = Path(tempfile.mkdtemp(prefix="harness-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.url = f"postgresql://harness@127.0.0.1:{self.port}/study"  # as users write it: psycopg 3

    def _run(self, *command: str) -> None:
        as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []  # initdb refuses root
        subprocess.run([*as_postgres, *command], check=True, capture_output=True, text=True, timeout=120)

    def _pg_ctl(self, action: str) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.root / "log"), "-w",
                  action)  # fmt: skip

    def start(self) -> PostgresServer:
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "harness", "--auth=trust", "-E", "UTF8")
        self._pg_ctl("start")
        self._run(str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "harness", "study")
        return self

    def restart(self) -> None:
        self._pg_ctl("restart")

    def stop(self) -> None:
        try:
            self._pg_ctl("stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
