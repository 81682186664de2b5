"""Pieces of the replica benchmark: lookup servers as subprocesses (started, killed and
stopped by PID), a throw-away PostgreSQL server, HTTP helpers, and a tiny catalog to serve."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from http_load import free_port

REPO = Path(__file__).resolve().parents[1]


def env_with_repo(extra: dict[str, str] | None = None) -> dict[str, str]:
    path = os.environ.get("PYTHONPATH")
    repo = f"{REPO}{os.pathsep}{path}" if path else str(REPO)
    return {**os.environ, "PYTHONPATH": repo, **(extra or {})}


# -- HTTP -----------------------------------------------------------------------------------------
def request(
    port: int, method: str, path: str, body: bytes | None = None, headers: dict | None = None
) -> tuple[int, bytes]:
    """One request on a new connection; (0, reason) when the connection fails."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.read()
    except (OSError, http.client.HTTPException) as exc:
        return 0, type(exc).__name__.encode()
    finally:
        conn.close()


# -- servers --------------------------------------------------------------------------------------
class Server:
    """One ``phonesim serve`` (gunicorn master + workers) on a fixed port."""

    def __init__(self, name: str, cmd: list[str], port: int, log: Path, env: dict) -> None:
        self.name, self.cmd, self.port, self.log, self.env = name, cmd, port, log, env
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self, workers: int, timeout: float = 180.0) -> None:
        self.wait_port_free()
        with self.log.open("ab") as fh:
            self.proc = subprocess.Popen(
                self.cmd, cwd=REPO, env=self.env, stdout=fh, stderr=subprocess.STDOUT
            )
        self.starts += 1
        deadline = time.monotonic() + timeout
        while len(self.workers()) < workers or request(self.port, "GET", "/readyz")[0] != 200:
            if self.proc.poll() is not None:
                sys.exit(f"{self.name} exited with {self.proc.returncode}; see {self.log}")
            if time.monotonic() > deadline:
                sys.exit(f"{self.name} not ready in {timeout:.0f} s; see {self.log}")
            time.sleep(0.2)

    def workers(self) -> list[int]:
        if self.proc is None or self.proc.poll() is not None:
            return []
        pid = self.proc.pid
        try:
            return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        except OSError:
            return []

    def pids(self) -> list[int]:
        """Master first, then workers."""
        return ([self.proc.pid] if self.alive else []) + self.workers()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_port_free(self, timeout: float = 60.0) -> None:
        """After a master was killed its orphaned workers hold the port until they notice."""
        deadline = time.monotonic() + timeout
        while request(self.port, "GET", "/healthz")[0] != 0 and time.monotonic() < deadline:
            time.sleep(0.2)

    def instance_folder(self) -> Path | None:
        found = re.findall(r"control socket (\S+)/gunicorn\.ctl", self.log.read_text())
        return Path(found[-1]) if found else None

    def stop(self) -> int:
        if not self.alive:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def server_command(
    checkpoint: Path, index: Path | None, store: str | None, port: int, args: list[str]
) -> list[str]:
    cmd = [sys.executable, "-m", "server", "--checkpoint", str(checkpoint), "--port", str(port)]
    if index is not None:
        cmd += ["--index", str(index)]
    if store is not None:
        cmd += ["--store", store]
    return cmd + args


# -- PostgreSQL -----------------------------------------------------------------------------------
def pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    return str(versions[-1]) if versions else None


@contextlib.contextmanager
def postgres(folder: Path) -> Iterator[tuple[str, Path]]:
    """A PostgreSQL server on a temp folder and a free local port: (URL, data folder).

    As root, it runs as the ``postgres`` user (initdb refuses root). Stopped at exit.
    """
    initdb, pg_ctl = pg_bin("initdb"), pg_bin("pg_ctl")
    if not (initdb and pg_ctl):
        raise RuntimeError("initdb/pg_ctl not found (Debian: apt-get install postgresql)")
    folder.mkdir(parents=True, exist_ok=True)
    data, port = folder / "data", free_port()
    prefix: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
        prefix = ["runuser", "-u", "postgres", "--"]
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=on"
    for command in (
        [*prefix, initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
        [*prefix, pg_ctl, "-D", str(data), "-o", options, "-l", str(folder / "pg.log"), "-w",
         "start"],
    ):  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:  # say why (a folder the postgres user cannot enter, ...)
            why = (done.stderr or done.stdout).strip()[-1000:]
            raise RuntimeError(f"{Path(command[len(prefix)]).name} failed: {why}")
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres", data
    finally:
        subprocess.run(
            [*prefix, pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            check=False,
        )


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


# -- a catalog to serve ---------------------------------------------------------------------------
def build_tiny(work: Path, classes: int, per_class: int) -> tuple[Path, Path]:
    """A generated catalog, timm's smallest test model trained on it for one epoch (seconds),
    and its index: (checkpoint, index). Reused when ``work`` already holds them."""
    ckpt, index = work / "checkpoint", work / "index"
    if (ckpt / "config.json").is_file() and (index / "manifest.json").is_file():
        return ckpt, index
    code = f"""
import sys
from pathlib import Path
from demo.catalog import generate_catalog
from embedder.inference import Embedder
from embedder.train import TrainConfig, train
from index import build_index, read_catalog_csv
work = Path({str(work)!r})
csv = generate_catalog(work / "catalog", classes={classes}, per_class={per_class}, seed=1,
                       image_size=64, progress=False)
train(TrainConfig(data=str(work / "catalog"), out=str(work / "checkpoint"),
                  model="test_efficientnet", weights="none", img_size=64, epochs=1,
                  warmup_epochs=0, batch_size=16, workers=0, progress=False))
emb = Embedder.from_checkpoint(work / "checkpoint")
rows = read_catalog_csv(csv)
ids = list(rows)
batch = emb.embed_paths([rows[i]["image"] for i in ids])
build_index(work / "index", ids, batch.embeddings, [rows[i] for i in ids],
            model_name=emb.model_name, checkpoint_hash=emb.checkpoint_hash,
            source={{"catalog": str(csv)}})
"""
    print(f"building a tiny catalog, checkpoint and index in {work}", flush=True)
    subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env_with_repo(), check=True)
    return ckpt, index


def readyz(port: int) -> dict:
    status, body = request(port, "GET", "/readyz")
    try:
        return json.loads(body) if status in (200, 503) else {}
    except ValueError:
        return {}


if __name__ == "__main__":  # `python scripts/<this>.py --help` had printed nothing, exit 0
    raise SystemExit(f"{__file__}: a module the benchmark scripts import, not a command")
