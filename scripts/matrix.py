"""The version matrix: the provider's tests on every supported Airflow minor and Python.

Each cell is its own virtualenv under ``.venv-matrix/<cell>`` (the main ``.venv`` is never
touched), built with ``pip install apache-airflow==X -e .[test]`` plus the MySQL provider with
``--no-deps`` exactly as ``make test`` does, and reused while its install line is unchanged.
Cells run one after the other (the machine's cores are shared) and the script prints one
Markdown table - the one the README's "Supported versions" section shows.

* ``core`` suites: hooks, operators (sensor included), triggers, the ``dag.test()`` example
  DAGs and the test DAGs - on the oldest and newest patch release of each supported minor.
* ``full``: everything ``make test`` runs, on the oldest and newest supported Python with the
  newest Airflow.

Usage::

    python scripts/matrix.py                 # every cell
    python scripts/matrix.py --cells floor   # the oldest supported Airflow only (CI)
    python scripts/matrix.py --cells af3.2.2-py3.11 --pytest-args "-k resume"
    python scripts/matrix.py --list

Exit status: 0 when every cell built and passed with no failures or errors, 1 otherwise.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MATRIX_DIR = REPO / ".venv-matrix"

#: The suites the issue names: hook, operator (the sensor's tests live there), trigger and dag.test.
CORE_SUITES = ["tests/hooks", "tests/operators", "tests/triggers", "tests/test_example_dags.py", "tests/dags"]
#: Everything ``make test`` runs (the pyproject's testpaths).
FULL_SUITES = ["tests"]

#: Oldest and newest supported patch release of every supported Airflow minor (3.1 from 3.1.8, the floor).
NEWEST_AIRFLOW = "3.3.2"
#: The floor (pyproject's apache-airflow>=3.1.8): the README's "Supported versions" says why.
FLOOR_AIRFLOW = "3.1.8"
CORE_AIRFLOWS = [FLOOR_AIRFLOW, "3.2.0", "3.2.2", "3.3.0", NEWEST_AIRFLOW]
#: Below the floor: run only when named (``--cells below-floor``), to show what fails there.
BELOW_FLOOR_AIRFLOWS = ["3.0.0", "3.0.6", "3.1.0"]
#: The Python the core cells use (every supported Airflow minor supports it).
CORE_PYTHON = "3.11"
#: Oldest and newest Python the package supports; the full suite runs on both with the newest Airflow.
FULL_PYTHONS = ["3.10", "3.13"]  # 3.10: DAP timestamps go through timestamps.parse_timestamp, not fromisoformat

#: Version-specific pins, applied as pip constraints (``pip install -c``), keyed by Airflow version
#: prefix. Airflow's own constraints files are not reachable from here, and the older releases
#: declare their dependencies without upper bounds, so a fresh install resolves today's releases
#: that they predate. Each pin is what broke (first error) and the range of the release's time.
PINS: dict[str, list[str]] = {
    "3.0.": [
        "fastapi<0.116",  # AirflowRouter.api_route() got an unexpected keyword argument 'max_body_size'
        "cadwyn<6",  # cadwyn 6+ needs a newer fastapi
        "universal-pathlib<0.3",  # ObjectStoragePath(...) detected protocol file which is incompatible
        "pyjwt<2.11",  # the API server's tokens: "Issuer (iss) must be a string"
    ],
    "3.1.": [
        "fastapi<0.118",  # 3.1.8's own cap (3.1.0 has none): 'max_body_size' as for 3.0
        "structlog<25.5",  # cannot import name 'Styles' from 'structlog.dev'
        "sqlalchemy<2.1",
        "universal-pathlib<0.3",  # 3.1.8's own cap
    ],
    "3.1.0": ["pyjwt<2.11"],  # "Issuer (iss) must be a string" (3.1.8 requires pyjwt>=2.11 and works)
    "3.2.": [
        "fastapi<0.137",  # 3.3's own cap
        "cadwyn<8",  # cadwyn 9 + pydantic 2.14: "Model 'TITerminalStatePayload' needs a discriminator field"
        "svcs<26",  # dag.test(): the execution API's "'State' object has no attribute 'svcs_registry'"
        "sqlalchemy<2.1",  # installed with svcs<26 when dag.test() passed again (3.2 predates SQLAlchemy 2.1)
    ],
}


#: What differs on a version, for the table's notes (keyed by Airflow version prefix).
DIFFERENCES: dict[str, str] = {
    "3.0.": "retry starts a new DAP job (no task state store); Test button needs the secret retyped",
    "3.1.0": "retry starts a new DAP job (no task state store); Test button needs the secret retyped",
    "3.1.8": "retry starts a new DAP job (no task state store)",
    "3.2.": "retry starts a new DAP job (no task state store)",
    "3.3.": "retry resumes its DAP job (task state store)",
}


def pins_for(airflow: str) -> list[str]:
    return [pin for prefix, values in PINS.items() if airflow.startswith(prefix) for pin in values]


@dataclass
class Cell:
    airflow: str
    python: str
    suites: list[str]
    label: str  # "core" or "full"
    notes: list[str] = field(default_factory=list)
    passed: int = 0
    failed: int = 0
    errors: int = 0
    skipped: int = 0
    seconds: float = 0.0
    build_seconds: float = 0.0
    status: str = "not run"

    @property
    def name(self) -> str:
        return f"af{self.airflow}-py{self.python}" + ("-full" if self.label == "full" else "")

    @property
    def venv(self) -> Path:
        """Shared by the core and full cells of one Airflow and Python."""
        return MATRIX_DIR / f"af{self.airflow}-py{self.python}"

    @property
    def junit(self) -> Path:
        return self.venv / f"{self.label}-junit.xml"

    @property
    def result(self) -> Path:
        return self.venv / f"{self.label}-result.json"


def all_cells() -> list[Cell]:
    cells = [Cell(v, CORE_PYTHON, CORE_SUITES, "core") for v in CORE_AIRFLOWS]
    cells += [Cell(NEWEST_AIRFLOW, py, FULL_SUITES, "full") for py in FULL_PYTHONS]
    cells += [Cell(v, CORE_PYTHON, CORE_SUITES, "below-floor") for v in BELOW_FLOOR_AIRFLOWS]
    for cell in cells:
        cell.notes = [d for prefix, d in DIFFERENCES.items() if cell.airflow.startswith(prefix)]
        if pins_for(cell.airflow):
            cell.notes.append("pinned: " + ", ".join(f"`{p}`" for p in pins_for(cell.airflow)))
    return cells


def select(cells: list[Cell], wanted: list[str]) -> list[Cell]:
    """``floor``, ``newest``, ``core``, ``full``, ``below-floor`` or cell names / Airflow versions."""
    if not wanted:
        return [c for c in cells if c.label != "below-floor"]
    chosen: list[Cell] = []
    for want in wanted:
        for cell in cells:
            match = (
                (want == "floor" and cell.airflow == FLOOR_AIRFLOW and cell.label == "core")
                or (want == "newest" and cell.airflow == NEWEST_AIRFLOW and cell.label == "core")
                or want in (cell.label, cell.name, cell.airflow)
            )
            if match and cell not in chosen:
                chosen.append(cell)
    if not chosen:
        raise SystemExit(f"no cell matches {wanted}; see --list")
    return chosen


def find_python(version: str) -> str:
    """An interpreter for ``version`` ("3.10"): ``MATRIX_PYTHON_3_10``, then ``python3.10`` on PATH, then pyenv's.

    :raises SystemExit: when none is found.
    """
    env = os.environ.get(f"MATRIX_PYTHON_{version.replace('.', '_')}")
    if env:
        return env
    candidates = sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{version}.*/bin/python{version}")))
    if candidates:  # pyenv's own build beats a shim that may point at another version
        return candidates[-1]
    found = shutil.which(f"python{version}")
    if found:
        return found
    raise SystemExit(f"no Python {version}: set MATRIX_PYTHON_{version.replace('.', '_')}")


def install_lines(cell: Cell) -> list[list[str]]:
    pins = pins_for(cell.airflow)
    first = ["install", f"apache-airflow=={cell.airflow}", "-e", f"{REPO}[test]"]
    if pins:
        constraints = cell.venv / "matrix-constraints.txt"
        first += ["-c", str(constraints)]
    return [first, ["install", "--no-deps", "apache-airflow-providers-mysql>=6.0"]]


def build(cell: Cell, log: Path, installer: str = "pip") -> bool:
    """Create or reuse the cell's venv; the stamp holds the install lines it was built with.

    :param installer: ``pip`` or ``uv`` (``uv pip install``, bootstrapped into the venv by pip:
        the same install lines and ``-c`` constraints, the same resolved versions, minutes faster).
        The stamp does not record it: either installer builds the venv those lines describe.
    """
    stamp = cell.venv / ".stamp-matrix"
    lines = install_lines(cell)
    pins = pins_for(cell.airflow)
    wanted = repr((lines, pins))
    if stamp.exists() and stamp.read_text() == wanted:
        return True
    start = time.monotonic()
    with log.open("a") as out:
        # no pip: a venv whose creation was interrupted (ensurepip runs last), made again
        if not (cell.venv / "bin" / "pip").exists():
            create = [find_python(cell.python), "-m", "venv", "--clear", str(cell.venv)]
            subprocess.run(create, check=True, stdout=out, stderr=out)
        if pins:
            (cell.venv / "matrix-constraints.txt").write_text("\n".join(pins) + "\n")
        python = str(cell.venv / "bin" / "python")
        pip = [python, "-m", "pip", "--disable-pip-version-check", "-q"]
        if installer == "uv":
            if subprocess.run([*pip, "install", "uv"], stdout=out, stderr=out).returncode != 0:
                cell.build_seconds = time.monotonic() - start
                return False
            # uv reads PyPI itself (not pip's config); --python: the cell's interpreter, not uv's own venv
            pip = [str(cell.venv / "bin" / "uv"), "pip"]
            lines = [[line[0], "-q", "--python", python, *line[1:]] for line in lines]
        for line in lines:
            out.write(f"$ {installer} {shlex.join(line)}\n")
            out.flush()
            if subprocess.run(pip + line, stdout=out, stderr=out).returncode != 0:
                cell.build_seconds = time.monotonic() - start
                return False
    stamp.write_text(wanted)
    cell.build_seconds = time.monotonic() - start
    return True


def run(cell: Cell, pytest_args: list[str], log: Path, tree: Path = REPO) -> None:
    junit = cell.junit
    junit.unlink(missing_ok=True)
    env = dict(os.environ)
    # A fresh Airflow home (and metadata DB) per cell: cells of different Airflow versions must
    # not migrate each other's database.
    home = tempfile.mkdtemp(prefix=f"airflow-home-{cell.name}-")
    env.update(AIRFLOW_HOME=home, AIRFLOW__CORE__LOAD_EXAMPLES="False", DAP_TRACKING="false")
    env.pop("AIRFLOW__CORE__DAGS_FOLDER", None)
    env.pop("VIRTUAL_ENV", None)
    dap_cli = REPO / ".venv-dap" / "bin" / "dap"
    if "DAP_CLI" not in env and dap_cli.exists():
        env["DAP_CLI"] = str(dap_cli)
    cmd = [str(cell.venv / "bin" / "python"), "-m", "pytest", *cell.suites, "-q", f"--junitxml={junit}", *pytest_args]
    start = time.monotonic()
    with log.open("a") as out:
        out.write(f"$ {shlex.join(cmd)}\n")
        out.flush()
        # ``python -m pytest`` puts the working directory first on sys.path, ahead of the editable
        # install's /work/main entry: with --tree the package and the tests both come from there.
        rc = subprocess.run(cmd, cwd=tree, env=env, stdout=out, stderr=out).returncode
    cell.seconds = time.monotonic() - start
    shutil.rmtree(home, ignore_errors=True)
    if not junit.exists():
        cell.status = f"pytest exit {rc}, no report"
        return
    count(cell, junit)
    ok = rc == 0 and cell.failed == 0 and cell.errors == 0
    cell.status = "pass" if ok else f"FAIL (pytest exit {rc})"


RESULT_FIELDS = ("passed", "failed", "errors", "skipped", "seconds", "status")


def save(cell: Cell) -> None:
    """The cell's last result, for ``--report`` (cells run by separate invocations)."""
    data = {k: getattr(cell, k) for k in RESULT_FIELDS}
    cell.result.write_text(json.dumps(data))


def load(cell: Cell) -> None:
    """The cell's saved result, else what its last junit report says (a run still going has none)."""
    path = cell.result
    junit = cell.junit
    if path.exists() and (not junit.exists() or path.stat().st_mtime >= junit.stat().st_mtime):
        for key, value in json.loads(path.read_text()).items():
            setattr(cell, key, value)
    elif junit.exists():
        count(cell, junit)
        cell.seconds = sum(float(s.get("time", 0)) for s in ET.parse(junit).getroot().iter("testsuite"))
        cell.status = "pass" if cell.failed == 0 and cell.errors == 0 else "FAIL"


def count(cell: Cell, junit: Path) -> None:
    for suite in ET.parse(junit).getroot().iter("testsuite"):
        tests = int(suite.get("tests", 0))
        failures, errors, skipped = (int(suite.get(k, 0)) for k in ("failures", "errors", "skipped"))
        cell.failed += failures
        cell.errors += errors
        cell.skipped += skipped
        cell.passed += tests - failures - errors - skipped


def table(cells: list[Cell]) -> str:
    rows = [
        "| Airflow | Python | Suites | Passed | Failed | Skipped | Result | Time | Notes |",
        "| --- | --- | --- | ---: | ---: | ---: | --- | ---: | --- |",
    ]
    for c in cells:
        suites = "full (`make test`)" if c.label == "full" else "hook, operator, sensor, trigger, dag.test"
        if c.label == "below-floor":
            suites += " (below the floor)"
        rows.append(
            f"| {c.airflow} | {c.python} | {suites} | {c.passed} | {c.failed + c.errors} | {c.skipped} "
            f"| {c.status} | {c.seconds / 60:.1f} min | {'; '.join(c.notes)} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--cells", nargs="*", default=[], help="floor, newest, core, full, below-floor, a cell name or version"
    )
    parser.add_argument("--pytest-args", default="", help="extra pytest arguments, one string")
    parser.add_argument("--build-only", action="store_true", help="build the venvs, run nothing")
    parser.add_argument(
        "--installer", choices=["pip", "uv"], default="pip", help="what installs a venv it builds (CI: uv)"
    )
    parser.add_argument("--list", action="store_true", help="print the cells and exit")
    parser.add_argument("--report", action="store_true", help="print the table of the cells' last results, run nothing")
    parser.add_argument(
        "--tree",
        type=Path,
        default=REPO,
        help="run the tests of another checkout of this repository (e.g. a clean `git worktree` of HEAD "
        "while the working tree has edits in progress); the venvs stay the same",
    )
    args = parser.parse_args(argv)

    cells = select(all_cells(), args.cells)
    if args.report:
        for cell in cells:
            load(cell)
        print(table(cells))
        return 0 if all(c.status == "pass" for c in cells) else 1
    if args.list:
        for c in cells:
            print(f"{c.name:20} {c.label:5} {' '.join(c.suites)}")
        return 0
    MATRIX_DIR.mkdir(exist_ok=True)
    started = time.monotonic()
    for cell in cells:
        log = MATRIX_DIR / f"{cell.name}.log"
        log.write_text("")
        print(f"== {cell.name} ({cell.label}): building", flush=True)
        if not build(cell, log, args.installer):
            cell.status = "BUILD FAILED"
            cell.notes.append(f"see {log.relative_to(REPO)}")
            print(f"   build failed after {cell.build_seconds:.0f} s, see {log}", flush=True)
            continue
        if cell.build_seconds:
            print(f"   built in {cell.build_seconds:.0f} s", flush=True)
        if args.build_only:
            cell.status = "built"
            continue
        print(f"== {cell.name}: pytest {' '.join(cell.suites)}", flush=True)
        run(cell, shlex.split(args.pytest_args), log, args.tree.resolve())
        save(cell)
        print(
            f"   {cell.status}: {cell.passed} passed, {cell.failed + cell.errors} failed, {cell.skipped} skipped"
            f" in {cell.seconds:.0f} s (log {log.relative_to(REPO)})",
            flush=True,
        )
    total = time.monotonic() - started
    result = table(cells)
    print()
    print(result)
    print(f"\nTotal: {total / 60:.1f} min for {len(cells)} cell(s)")
    (MATRIX_DIR / "results.md").write_text(result + "\n")
    return 0 if all(c.status in ("pass", "built") for c in cells) else 1


if __name__ == "__main__":
    sys.exit(main())
