"""An ``ObjectStoragePath`` target is told from a local path on every Airflow version.

Under universal-pathlib < 0.3 (Airflow 3.0 and 3.1, run by the version matrix) an
``ObjectStoragePath`` subclasses ``pathlib.Path``, so an ``os.PathLike`` check took ``s3://...``
for a local directory: downloads and the watermark file went to the local disk. These failed
there before ``_compat.is_object_storage_path``; on Airflow 3.2+ they pass either way.
"""

from __future__ import annotations

from pathlib import Path

from airflow_provider_instructure._compat import ObjectStoragePath, is_object_storage_path
from airflow_provider_instructure.hooks.downloads import _Sink
from airflow_provider_instructure.operators.file_watermark import _as_path


def test_object_storage_paths_are_told_from_local_ones(tmp_path: Path) -> None:
    target = ObjectStoragePath(f"file://{tmp_path}/lake")
    assert is_object_storage_path(target)
    assert not is_object_storage_path(tmp_path) and not is_object_storage_path(str(tmp_path))


def test_the_download_sink_writes_through_the_object_storage_path(tmp_path: Path) -> None:
    sink = _Sink(ObjectStoragePath(f"file://{tmp_path}/lake"))
    assert sink.remote
    assert sink.uri(sink.final("part-0.json.gz")).startswith("file://")
    assert not _Sink(tmp_path / "local").remote


def test_the_watermark_keeps_an_object_storage_path(tmp_path: Path) -> None:
    target = ObjectStoragePath(f"file://{tmp_path}/lake")
    assert _as_path(target) is target
    assert _as_path(f"file://{tmp_path}/lake") == tmp_path / "lake"
