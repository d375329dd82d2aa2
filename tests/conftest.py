"""Shared fixtures. Hub settings are fixed here, before anything imports huggingface_hub:
reads go to olah (a real Hub-compatible server started below on 127.0.0.1), the cache
lives in a temp dir, and uploads use the documented LFS protocol (Xet needs a CAS
service no offline server provides)."""

import atexit
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

_HUB_ROOT = Path(tempfile.mkdtemp(prefix="obsdiff-hub-tests-"))
atexit.register(shutil.rmtree, _HUB_ROOT, ignore_errors=True)  # the Hub trees, caches and olah's log of this session


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


OLAH_PORT = _free_port()
OLAH_ENDPOINT = f"http://127.0.0.1:{OLAH_PORT}"
os.environ.update(
    HF_ENDPOINT=OLAH_ENDPOINT,
    HF_HOME=str(_HUB_ROOT / "hf-home"),
    HF_HUB_DISABLE_XET="1",
    HF_HUB_DISABLE_TELEMETRY="1",
    HF_HUB_ETAG_TIMEOUT="30",
    OBSDIFF_HUB_CACHE=str(_HUB_ROOT / "obsdiff-cache"),
)
os.environ.pop("HF_TOKEN", None)
if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest-xdist runs one worker per core: one thread each, or their torch thread pools fight over the cores
    # (set before torch is imported; subprocesses inherit it)
    os.environ["OMP_NUM_THREADS"] = "1"
os.environ.pop("HF_HUB_OFFLINE", None)


def pytest_generate_tests(metafunc):
    """A test that takes ``device`` runs on the CPU, and on CUDA too where a GPU is (marked ``cuda``: ``pytest -m
    cuda`` runs only those); a machine without one has no CUDA case at all, rather than a skipped one."""
    if "device" in metafunc.fixturenames:
        import torch

        params = [pytest.param("cpu", id="cpu")]
        if torch.cuda.is_available():
            params.append(pytest.param("cuda", id="cuda", marks=pytest.mark.cuda))
        metafunc.parametrize("device", params)


def invoke(*args, **env):
    """The command line, in process: ``invoke("prune", "-r", name, "--out", path)`` (arguments become strings)."""
    from typer.testing import CliRunner

    from obsdiff_hub.cli import app

    return CliRunner().invoke(app, [str(a) for a in args], env=env or None)


@pytest.fixture(scope="session")
def shapes_dense():
    """The shipped shapes model's scores and images on its 60 evaluation scenes (computed once per worker)."""
    from obsdiff_hub.shapes.pipeline import evaluate, load_shapes_pipeline

    return evaluate(load_shapes_pipeline())


class Hub:
    """olah for reads, the write double for uploads, both over one mirrors/ tree."""

    def __init__(self, root: Path, double, token: str) -> None:
        self.root = root
        self.read_endpoint = OLAH_ENDPOINT
        self.write_endpoint = double.endpoint
        self.double = double
        self.token = token


@pytest.fixture(scope="session")
def hub():
    import httpx
    from hub_double import HubWriteDouble

    mirrors = _HUB_ROOT / "mirrors"
    (mirrors / "models").mkdir(parents=True)
    config = _HUB_ROOT / "olah.toml"
    config.write_text(
        "[basic]\n"
        f'host = "127.0.0.1"\nport = {OLAH_PORT}\n'
        f'mirror-netloc = "127.0.0.1:{OLAH_PORT}"\nmirror-lfs-netloc = "127.0.0.1:{OLAH_PORT}"\n'
        f'repos-path = "{_HUB_ROOT / "olah-repos"}"\nmirrors-path = ["{mirrors}"]\n'
        "[accessibility]\noffline = true\n"
    )
    log = open(_HUB_ROOT / "olah.log", "w")
    olah = subprocess.Popen(
        [str(Path(sys.executable).parent / "olah-cli"), "-c", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=_HUB_ROOT,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{OLAH_ENDPOINT}/api/models/_/_/refs", timeout=1)
                break
            except httpx.TransportError:
                if olah.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"olah did not start; see {_HUB_ROOT / 'olah.log'}") from None
                time.sleep(0.2)
        with HubWriteDouble(mirrors, token="hf_test_" + os.urandom(8).hex()) as double:
            yield Hub(_HUB_ROOT, double, double.token)
    finally:
        olah.terminate()
        olah.wait(timeout=10)
        log.close()


# The files that take longest (measured: `pytest --durations=0`), started first: pytest-xdist hands a
# worker one file at a time in collection order, so the longest ones must not be the last to start.
LONGEST_FIRST = [
    "test_main_job.py",
    "test_evaluation.py",
    "test_shapes.py",
    "test_distributed.py",
    "test_cli.py",
    "test_hostile_inputs.py",
    "test_checkpoint.py",
    "test_hub.py",
    "test_family.py",
    "test_security.py",
    "test_adapters.py",
    "test_races_and_bounds.py",
    "test_engine.py",
    "test_cli_vocabulary.py",
    "test_gpu_script.py",
    "test_packaging.py",
    "test_admm.py",
]


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: order within a file is kept
