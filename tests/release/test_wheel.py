"""The release artefacts: what the wheel and sdist hold, and the provider running from the wheel.

The wheel goes into a clean virtualenv (``python -m venv`` in a temporary directory, nothing of
this repository on ``sys.path``) with the same ``apache-airflow`` version the suite runs on; there
``airflow providers list`` must show the provider at this version, and the lightest example DAG
(``example_cd2_list_tables``) must succeed under ``airflow dags test`` against the emulator that
the wheel itself ships (``python -m airflow_provider_instructure.emulator``).

``make dist`` builds ``dist/`` first in CI; these tests reuse it when it is newer than every
source file it packs, and build into a temporary directory otherwise (a stale ``dist/`` would
test yesterday's code).
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pytest
import requests

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: tomli, the same API (installed with build)
    import tomli as tomllib  # type: ignore[no-redef]

from tests.conftest import REPO

# Installing Airflow into a fresh virtualenv takes 1-3 minutes on two shared cores.
pytestmark = [pytest.mark.release, pytest.mark.timeout(1200)]

PACKAGE = "airflow_provider_instructure"
DIST_NAME = "airflow-provider-instructure"
#: The version the source declares; read from the file, not the import, which could be another copy.
VERSION = re.search(r'__version__ = "([^"]+)"', (REPO / PACKAGE / "__init__.py").read_text()).group(1)
#: What ``[tool.hatch.build.targets.sdist] include`` packs (pyproject.toml is always packed).
SDIST_SOURCES = [
    PACKAGE,
    "tests",
    "example_dags",
    "benchmarks",
    "scripts",
    ".ci",
    "README.md",
    "CHANGELOG.md",
    "LICENSE",
    "Makefile",
    "pyproject.toml",
]
EXAMPLE_DAG = "example_cd2_list_tables"


@dataclass
class Dist:
    wheel: Path
    sdist: Path


def _newest_source_mtime() -> float:
    newest = 0.0
    for name in SDIST_SOURCES:
        path = REPO / name
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        for file in files:
            if "__pycache__" not in file.parts and file.suffix != ".pyc":
                newest = max(newest, file.stat().st_mtime)
    return newest


def _artefacts(folder: Path) -> Dist | None:
    wheel = folder / f"{PACKAGE}-{VERSION}-py3-none-any.whl"
    sdist = folder / f"{PACKAGE}-{VERSION}.tar.gz"
    return Dist(wheel, sdist) if wheel.is_file() and sdist.is_file() else None


def _run(args: list[str | Path], timeout: float, **kwargs) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=timeout, check=False, **kwargs
    )
    tail = f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    assert result.returncode == 0, f"{args} exited {result.returncode}:\n{tail}"
    return result


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Dist:
    """``dist/`` from ``make dist`` when it is fresh, else a new build."""
    reused = _artefacts(REPO / "dist")
    if reused and min(reused.wheel.stat().st_mtime, reused.sdist.stat().st_mtime) > _newest_source_mtime():
        return reused
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "build", "--outdir", out, REPO], timeout=600)
    built = _artefacts(out)
    assert built, f"python -m build made {sorted(p.name for p in out.iterdir())}, not version {VERSION}"
    return built


def test_twine_check_passes(dist: Dist) -> None:
    """PyPI would accept the metadata and render the README as the project description."""
    result = _run([sys.executable, "-m", "twine", "check", "--strict", dist.wheel, dist.sdist], timeout=120)
    assert result.stdout.count("PASSED") == 2, result.stdout


def test_wheel_holds_the_package_and_nothing_else(dist: Dist) -> None:
    names = zipfile.ZipFile(dist.wheel).namelist()
    info = f"{PACKAGE}-{VERSION}.dist-info"
    strays = [n for n in names if not n.startswith((f"{PACKAGE}/", f"{info}/"))]
    assert strays == [], "the wheel holds files outside the package (tests, example DAGs...)"
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    # every module and data file of the package, e.g. the emulator's table schemas and py.typed
    expected = {
        p.relative_to(REPO).as_posix()
        for p in (REPO / PACKAGE).rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    }
    assert expected - set(names) == set()
    assert {f"{PACKAGE}/py.typed", f"{PACKAGE}/emulator/schemas/canvas.json", f"{info}/licenses/LICENSE"} <= set(names)
    with zipfile.ZipFile(dist.wheel) as wheel:
        meta = wheel.read(f"{info}/METADATA").decode()
        entry_points = wheel.read(f"{info}/entry_points.txt").decode()
    assert f"\nVersion: {VERSION}\n" in meta
    # The floors pyproject.toml declares (README "Supported versions" says why), as pip will read them.
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    airflow_floor = next(d for d in project["dependencies"] if re.match(r"apache-airflow[><=]", d))
    assert f"\nRequires-Python: {project['requires-python']}\n" in meta
    assert f"\nRequires-Dist: {airflow_floor}\n" in meta
    assert f"provider_info = {PACKAGE}.get_provider_info:get_provider_info" in entry_points


def test_sdist_holds_sources_tests_and_docs(dist: Dist) -> None:
    prefix = f"{PACKAGE}-{VERSION}/"
    with tarfile.open(dist.sdist) as archive:
        names = {m.name.removeprefix(prefix) for m in archive.getmembers() if m.isfile()}
    required = {
        "PKG-INFO",
        "pyproject.toml",
        "README.md",
        "CHANGELOG.md",
        "LICENSE",
        "Makefile",
        ".ci/run",
        f"{PACKAGE}/__init__.py",
        f"{PACKAGE}/emulator/schemas/canvas.json",
        "tests/conftest.py",
        "tests/release/test_wheel.py",
        f"example_dags/{EXAMPLE_DAG}.py",
    }
    assert required - names == set()
    unwanted = [n for n in names if n.startswith((".venv", "dist/", "demo-output/", ".airflow-home/")) or ".pyc" in n]
    assert unwanted == []
    with tarfile.open(dist.sdist) as archive:
        changelog = archive.extractfile(prefix + "CHANGELOG.md").read().decode()
    releases = [line for line in changelog.splitlines() if line.startswith("## ")]
    assert releases and releases[0].startswith(f"## {VERSION} "), f"CHANGELOG.md starts with {releases[:1]}"


@dataclass
class CleanVenv:
    root: Path
    home: Path

    def bin(self, name: str) -> Path:
        return self.root / "venv" / "bin" / name

    def env(self, **extra: str) -> dict[str, str]:
        """Nothing inherited that could point back at this repository or the test's Airflow home."""
        keep = {k: os.environ[k] for k in ("LANG", "LC_ALL", "TMPDIR") if k in os.environ}
        return {
            **keep,
            "PATH": f"{self.bin('')}{os.pathsep}/usr/bin{os.pathsep}/bin",
            "HOME": str(self.home),
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(self.home / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "DAP_TRACKING": "false",
            **extra,
        }


@pytest.fixture(scope="module")
def clean_venv(dist: Dist, tmp_path_factory: pytest.TempPathFactory) -> CleanVenv:
    """A new virtualenv with the wheel and this suite's Airflow version, and nothing else."""
    root = tmp_path_factory.mktemp("clean")
    venv = CleanVenv(root, root / "airflow-home")
    (venv.home / "dags").mkdir(parents=True)
    # The suite's own versions as constraints: pip resolves without backtracking and the clean
    # venv runs what the suite tested. Constraints only pin; a dependency the wheel forgot to
    # declare is still missing here.
    frozen = _run([sys.executable, "-m", "pip", "freeze", "--exclude-editable"], timeout=120).stdout.splitlines()
    constraints = root / "constraints.txt"
    constraints.write_text(
        "\n".join(line for line in frozen if "==" in line and not line.lower().startswith(DIST_NAME)) + "\n"
    )
    _run([sys.executable, "-m", "venv", root / "venv"], timeout=300)
    pip_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # keep the machine's pip settings
    started = time.monotonic()
    airflow = f"apache-airflow=={metadata.version('apache-airflow')}"
    # The suite's venv has uv (make test installs through it): the same install, ~10x faster than
    # pip on two cores. It installs only into --python; the clean venv itself gets no uv.
    uv = Path(sys.executable).parent / "uv"
    if uv.exists():
        installer: list[str | Path] = [uv, "pip", "install", "-q", "--python", venv.bin("python")]
    else:
        installer = [venv.bin("python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    _run([*installer, "-c", constraints, dist.wheel, airflow], timeout=900, env=pip_env, cwd=root)
    took = time.monotonic() - started
    print(f"clean venv: wheel + apache-airflow installed by {Path(installer[0]).name} in {took:.0f} s")
    return venv


def test_the_clean_venv_imports_the_wheel_not_the_checkout(clean_venv: CleanVenv) -> None:
    probe = f"import {PACKAGE} as p, importlib.metadata as m; print(p.__file__); print(m.version('{DIST_NAME}'))"
    out = _run([clean_venv.bin("python"), "-c", probe], timeout=120, env=clean_venv.env(), cwd=clean_venv.home)
    location, version = out.stdout.split()
    assert Path(location).is_relative_to(clean_venv.root / "venv"), location
    assert version == VERSION


def test_airflow_providers_list_shows_this_version(clean_venv: CleanVenv) -> None:
    out = _run(
        [clean_venv.bin("airflow"), "providers", "list", "-o", "json"],
        timeout=300,
        env=clean_venv.env(),
        cwd=clean_venv.home,
    ).stdout
    providers = {p["package_name"]: p for p in json.loads(out[out.index("[") :])}
    assert providers[DIST_NAME]["version"] == VERSION


@pytest.fixture
def wheel_emulator(clean_venv: CleanVenv) -> Iterator[str]:
    """The emulator CLI from the clean venv (core catalog, 5 rows per table); yields its URL."""
    log = clean_venv.root / "emulator.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [clean_venv.bin("python"), "-m", f"{PACKAGE}.emulator", "--port", "0", "--catalog", "core", "--rows", "5"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=clean_venv.env(),
            cwd=clean_venv.home,
            start_new_session=True,  # its own process group, stopped by id below
        )
    try:
        deadline = time.monotonic() + 120
        while not (found := re.search(r"listening on (http://\S+)", log.read_text(errors="replace"))):
            assert process.poll() is None, f"the emulator exited:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"the emulator did not start:\n{log.read_text()[-3000:]}"
            time.sleep(0.2)
        yield found.group(1)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


def test_example_dag_runs_from_the_wheel(clean_venv: CleanVenv, wheel_emulator: str) -> None:
    """``airflow dags test`` of the list-tables example, every import resolved in the clean venv."""
    dag_file = clean_venv.home / "dags" / f"{EXAMPLE_DAG}.py"
    dag_file.write_text((REPO / "example_dags" / f"{EXAMPLE_DAG}.py").read_text())
    port = int(wheel_emulator.rsplit(":", 1)[1])
    # the README's JSON form of an emulator connection
    connection = json.dumps(
        {
            "conn_type": "instructure",
            "host": wheel_emulator,
            "port": port,
            "login": "us-east-1#demo-client-id",
            "password": "demo-client-secret",
        }
    )
    env = clean_venv.env(AIRFLOW_CONN_INSTRUCTURE_DEFAULT=connection)
    _run([clean_venv.bin("airflow"), "db", "migrate"], timeout=600, env=env, cwd=clean_venv.home)
    _run([clean_venv.bin("airflow"), "dags", "test", EXAMPLE_DAG], timeout=600, env=env, cwd=clean_venv.home)

    # A failed run already exits non-zero; the metadata database also says which tasks ran, and how.
    with sqlite3.connect(clean_venv.home / "airflow.db") as db:
        runs = db.execute("SELECT state FROM dag_run WHERE dag_id = ?", (EXAMPLE_DAG,)).fetchall()
        tasks = db.execute(
            "SELECT task_id, state, COUNT(*) FROM task_instance WHERE dag_id = ? GROUP BY task_id, state",
            (EXAMPLE_DAG,),
        ).fetchall()
    assert runs == [("success",)]
    by_task = {task_id: (state, count) for task_id, state, count in tasks}
    assert set(by_task) == {"list_tables", "get_schema", "summarize"}, tasks
    assert all(state == "success" for state, _ in by_task.values()), tasks

    # ...and it ran against the wheel's emulator: one listing, one schema call per mapped task
    calls = requests.get(f"{wheel_emulator}/_emulator/stats", timeout=30).json()["calls"]
    assert calls["list_tables"] == 1
    assert calls["get_schema"] == by_task["get_schema"][1] >= 10
