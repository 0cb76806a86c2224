"""A throwaway PostgreSQL server for tests (Debian's binaries), and the environment of the
multi-process sweep tests.

:func:`postgres_server` runs ``initdb`` (trust auth) in a fresh temporary folder, starts the
server on 127.0.0.1 on a free port (Unix socket in the same folder), creates a database and
yields its URL; it stops the server and removes the folder afterwards. As root, every
PostgreSQL binary runs as the ``postgres`` user (``initdb`` refuses root) and the folder is
given to that user.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import textwrap
from pathlib import Path
from typing import Iterator

BIN_GLOBS = ("/usr/lib/postgresql/*/bin",)


def find_pg_bin() -> Path | None:
    """The folder with initdb/pg_ctl/createdb: the newest Debian install, else PATH."""
    found = []
    for pattern in BIN_GLOBS:
        for p in Path("/").glob(pattern.lstrip("/")):
            if (p / "initdb").is_file() and (p / "pg_ctl").is_file():
                try:
                    found.append((int(p.parent.name.split(".")[0]), p))
                except ValueError:
                    found.append((0, p))
    if found:
        return max(found)[1]
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        return Path(initdb).parent
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_pg_user(cmd: list[str]) -> list[str]:
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *cmd]
    return cmd


def _run(cmd: list[str], log: Path | None = None, timeout: float = 120) -> None:
    out = subprocess.run(_as_pg_user(cmd), capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        extra = log.read_text(errors="replace")[-3000:] if log and log.is_file() else ""
        raise RuntimeError(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stdout}\n"
                           f"{out.stderr}\n{extra}")


@contextlib.contextmanager
def postgres_server(bin_dir: Path, db: str = "sweeps") -> Iterator[str]:
    """Start a temporary server; yield ``postgresql://postgres@127.0.0.1:PORT/db``."""
    root = Path(tempfile.mkdtemp(prefix="persrv-pg-"))
    data, sock, log = root / "data", root / "sock", root / "server.log"
    sock.mkdir()
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        import pwd
        pw = pwd.getpwnam("postgres")  # KeyError: binaries without their user
        for p in (root, sock):
            os.chown(p, pw.pw_uid, pw.pw_gid)
    port = free_port()
    started = False
    try:
        _run([str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
              "--no-sync", "-E", "UTF8"])
        _run([str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60",
              "-o", f"-c listen_addresses=127.0.0.1 -p {port} -k {sock} -c fsync=off "
                    "-c max_connections=50", "start"], log=log)
        started = True
        _run([str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
              db], log=log)
        yield f"postgresql://postgres@127.0.0.1:{port}/{db}"
    finally:
        if started:
            with contextlib.suppress(Exception):
                _run([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w",
                      "stop"], log=log)
        shutil.rmtree(root, ignore_errors=True)


def slow_trials_env(folder: Path, seconds: float, repo: Path) -> dict[str, str]:
    """Environment for sweep worker processes whose every trial takes at least ``seconds``
    (a ``sitecustomize`` that wraps PerSRV.with_params), so that concurrent workers really
    overlap on a tiny dataset."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(textwrap.dedent(f"""
        import time
        from baselines.persrv import PerSRV
        _orig = PerSRV.with_params
        def _slow(self, **params):
            time.sleep({seconds})
            return _orig(self, **params)
        PerSRV.with_params = _slow
    """))
    path = os.pathsep.join([str(folder), str(repo), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path.rstrip(os.pathsep)}
