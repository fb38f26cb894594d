"""A managed local tritonserver (the binary in the nvidia-pytriton wheel, python backend, CPU).

    server = TritonServer(repo_dir, log_dir=..., model_control="explicit", load_models=["moodwatch"])
    server.start()                 # waits until /v2/health/ready answers 200
    server.grpc_url                # "127.0.0.1:PORT" for MOODWATCH_TRITON_URL

    settings = start_local_triton(stack, settings)   # export + start + stack.add; backend="triton"

What it takes to run the wheel's tritonserver outside pytriton (measured, see ARCHITECTURE.md):
- a backends folder holding a *copy* of ``pytriton/tritonserver/backends/python`` plus the stub
  for the running Python (``python_backend_stubs/3.11/triton_python_backend_stub``), passed as
  ``--backend-directory``;
- ``LD_LIBRARY_PATH`` with the running Python's own lib dir (libpython3.11.so for the stub; with
  another libpython: ``'_thread.RLock' object has no attribute '_recursion_count'``) and the
  wheel's ``nvidia_pytriton.libs``;
- the stub embeds the base interpreter and ignores PYTHONPATH, so the project folder and this
  environment's site-packages go in ``MOODWATCH_TRITON_PYTHONPATH``, which every model.py puts
  first on sys.path before numpy is imported (the base interpreter here has numpy 2.x, with which
  python-backend outputs come back empty; the project's numpy 1.26 works).
Also set here: the python backend's shared-memory arena starts at 16 MiB and grows by 16 MiB
(default 1 MiB steps: a batch of 32 images is ~19 MiB of pixels), the stub start timeout is
raised (importing torch in 5 stubs at once on a busy 2-core machine takes a while), and every
listener is bound to 127.0.0.1.
"""

from __future__ import annotations

import os
import shutil
import site
import sys
import sysconfig
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

from workers.devstack.servers import LOOPBACK, ManagedProcess, _http_get

PROJECT_ROOT = Path(__file__).resolve().parents[2]

__all__ = ["TritonServer", "TritonNotInstalled", "python_backend_env", "start_local_triton", "triton_paths"]


class TritonNotInstalled(RuntimeError):
    """The nvidia-pytriton wheel (which carries tritonserver) is not installed."""


def triton_paths() -> dict[str, Path]:
    """Where the wheel keeps the server binary, the python backend, the stub and its libraries."""
    try:
        import pytriton
    except ImportError as exc:
        raise TritonNotInstalled(
            "tritonserver comes with the nvidia-pytriton wheel: pip install 'moodwatch[local]'"
        ) from exc
    base = Path(pytriton.__file__).resolve().parent / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    paths = {
        "binary": base / "bin" / "tritonserver",
        "python_backend": base / "backends" / "python",
        "stub": base / "python_backend_stubs" / version / "triton_python_backend_stub",
        "libs": base.parent.parent / "nvidia_pytriton.libs",
        "python_lib": Path(sysconfig.get_config_var("LIBDIR") or Path(sys.base_prefix) / "lib"),
    }
    missing = [f"{k}: {v}" for k, v in paths.items() if not v.exists()]
    if missing:
        raise TritonNotInstalled("incomplete nvidia-pytriton install, missing " + "; ".join(missing))
    return paths


def python_backend_env(extra_paths: Sequence[str | os.PathLike[str]] = ()) -> dict[str, str]:
    """Environment for tritonserver + python-backend stubs running this project's models."""
    paths = triton_paths()
    lib_path = [str(paths["python_lib"]), str(paths["libs"])]
    if os.environ.get("LD_LIBRARY_PATH"):
        lib_path.append(os.environ["LD_LIBRARY_PATH"])
    py_path = [str(p) for p in extra_paths] + [str(PROJECT_ROOT)]
    py_path += [p for p in site.getsitepackages() if Path(p).is_dir()]
    if site.ENABLE_USER_SITE and Path(site.getusersitepackages()).is_dir():
        py_path.append(site.getusersitepackages())
    return {
        "LD_LIBRARY_PATH": os.pathsep.join(lib_path),
        "MOODWATCH_TRITON_PYTHONPATH": os.pathsep.join(dict.fromkeys(py_path)),
        # The stubs run torch / OpenCV; keep their thread pools from oversubscribing the cores.
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(max(1, os.cpu_count() or 1))),
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
        "TRANSFORMERS_OFFLINE": os.environ.get("TRANSFORMERS_OFFLINE", "1"),
    }


class TritonServer(ManagedProcess):
    """tritonserver on a model repository; gRPC is the main port, HTTP and metrics are extra ports.

    ``model_control``: "none" loads every model in the repository at start; "explicit" loads only
    ``load_models`` (an ensemble brings its steps) and lets clients load/unload through the
    repository API (used by the tests that unload a model mid-stream).
    """

    name = "tritonserver"
    extra_ports: ClassVar[tuple[str, ...]] = ("http", "metrics")
    ready_timeout_s: float = 300.0  # five python stubs importing torch on a loaded 2-core machine
    stop_timeout_s: float = 20.0

    def __init__(
        self,
        repo: str | os.PathLike[str],
        *,
        model_control: Literal["none", "explicit", "poll"] = "none",
        load_models: Iterable[str] = (),
        log_verbose: int = 0,
        exit_timeout_s: int = 5,
        shm_default_bytes: int = 16 * 1024 * 1024,
        shm_growth_bytes: int = 16 * 1024 * 1024,
        stub_timeout_s: int = 120,
        extra_args: Sequence[str] = (),
        **kw: Any,
    ) -> None:
        super().__init__(**kw)
        self.repo = Path(repo).resolve()
        self.model_control = model_control
        self.load_models = list(load_models)
        self.log_verbose = int(log_verbose)
        self.exit_timeout_s = int(exit_timeout_s)
        self.shm_default_bytes = int(shm_default_bytes)
        self.shm_growth_bytes = int(shm_growth_bytes)
        self.stub_timeout_s = int(stub_timeout_s)
        self.extra_args = list(extra_args)
        self._paths: dict[str, Path] | None = None

    # ---- ManagedProcess hooks -------------------------------------------------------------------
    def command(self) -> list[str]:
        paths = self._triton()
        if not (self.repo.is_dir() and any(self.repo.glob("*/config.pbtxt"))):
            raise FileNotFoundError(
                f"no model repository at {self.repo} (no */config.pbtxt); create one with `moodwatch triton export --repo {self.repo}`"
            )
        cmd = [
            str(paths["binary"]),
            f"--model-repository={self.repo}",
            f"--backend-directory={self._backends_dir()}",
            f"--model-control-mode={self.model_control}",
            f"--grpc-address={self.host}", f"--grpc-port={self.port}",
            f"--http-address={self.host}", f"--http-port={self.ports['http']}",
            f"--metrics-address={self.host}", f"--metrics-port={self.ports['metrics']}",
            "--allow-gpu-metrics=false",
            "--disable-auto-complete-config",  # the configs are complete; saves one stub start per model
            f"--log-verbose={self.log_verbose}",
            f"--exit-timeout-secs={self.exit_timeout_s}",
            f"--backend-config=python,shm-default-byte-size={self.shm_default_bytes}",
            f"--backend-config=python,shm-growth-byte-size={self.shm_growth_bytes}",
            f"--backend-config=python,stub-timeout-seconds={self.stub_timeout_s}",
        ]  # fmt: skip
        cmd += [f"--load-model={m}" for m in self.load_models]
        return cmd + self.extra_args

    def process_env(self) -> dict[str, str]:
        return python_backend_env()

    def is_ready(self) -> bool:
        status, _ = _http_get(f"{self.http_url}/v2/health/ready")
        if status != 200:
            return False
        return all(_http_get(f"{self.http_url}/v2/models/{m}/ready")[0] == 200 for m in self.load_models)

    def settings_overrides(self) -> dict[str, str]:
        return {"MOODWATCH_TRITON_URL": self.grpc_url, "MOODWATCH_BACKEND": "triton"}

    # ---- addresses ------------------------------------------------------------------------------
    @property
    def grpc_url(self) -> str:
        return self.address

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.ports['http']}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.ports['metrics']}/metrics"

    def client(self):
        """A tritonclient gRPC client for this server (the caller closes it)."""
        import tritonclient.grpc as grpcclient

        return grpcclient.InferenceServerClient(self.grpc_url)

    # ---- internals ------------------------------------------------------------------------------
    def _triton(self) -> dict[str, Path]:
        if self._paths is None:
            self._paths = triton_paths()
        return self._paths

    def _backends_dir(self) -> Path:
        """<log_dir>/backends/python: a copy of the wheel's python backend plus the stub."""
        paths = self._triton()
        target = self.log_dir / "backends" / "python"
        target.mkdir(parents=True, exist_ok=True)
        sources = [p for p in paths["python_backend"].iterdir() if p.is_file()] + [paths["stub"]]
        for src in sources:
            dst = target / src.name
            if not dst.exists() or dst.stat().st_size != src.stat().st_size:
                shutil.copy2(src, dst)
        return target.parent


def start_local_triton(
    stack: Any,
    settings: Any,
    *,
    repo_dir: str | os.PathLike[str] | None = None,
    kind: str = "cpu",
    model_control: Literal["none", "explicit"] = "explicit",
    export: bool = True,
) -> Any:
    """Export the repository from the settings' heads/index/backbone (unless ``export=False`` and
    ``repo_dir`` already holds one), start tritonserver on it as part of ``stack`` (a LocalStack;
    stopped with it), and return the settings pointed at it with ``backend="triton"``."""
    workdir = Path(getattr(stack, "workdir", None) or Path.cwd() / "artifacts" / "local-triton")
    repo = Path(repo_dir) if repo_dir is not None else workdir / "triton_repo"
    if export:
        from pipelines.checkpoints import DEFAULT_HEADS
        from pipelines.export import export_repository
        from pipelines.retrieval import default_index_dir
        from workers.analyzer.backends import load_database

        heads_path = settings.heads_path if Path(settings.heads_path).exists() else DEFAULT_HEADS
        if settings.index_dir is None:
            load_database(settings)  # builds the default seed index on first use
        index_dir = settings.index_dir or default_index_dir(settings.artifacts_dir)
        export_repository(
            heads_path,
            index_dir,
            repo,
            kind,
            image_encoder=settings.image_encoder,
            retrieval_k=settings.retrieval_k,
            regions_top_k=settings.regions_top_k,
            models=None if settings.triton_model == "moodwatch" else [settings.triton_model],
        )
    server = TritonServer(
        repo,
        log_dir=workdir / "logs",
        host=LOOPBACK,
        model_control=model_control,
        load_models=[settings.triton_model] if model_control == "explicit" else (),
    )
    stack.add(server, start=True)
    return settings.model_copy(update={"backend": "triton", "triton_url": server.grpc_url})
