"""Imports whose home moved between Airflow releases; every module imports them from here."""

from __future__ import annotations

try:  # Airflow 3.1+
    from airflow.sdk import BaseHook
except ImportError:  # pragma: no cover - Airflow 3.0
    from airflow.hooks.base import BaseHook  # type: ignore[no-redef]

try:
    from airflow.sdk import Asset, BaseOperator, BaseSensorOperator, Context, ObjectStoragePath, PokeReturnValue
except ImportError:  # pragma: no cover - Airflow 3.0
    from airflow.models import BaseOperator  # type: ignore[no-redef]
    from airflow.sdk import Asset, Context, ObjectStoragePath  # type: ignore[no-redef]
    from airflow.sensors.base import BaseSensorOperator, PokeReturnValue  # type: ignore[no-redef]

try:  # Airflow 3.2+
    from airflow.sdk.log import mask_secret
except ImportError:  # pragma: no cover - Airflow 3.0/3.1
    from airflow.sdk.execution_time.secrets_masker import mask_secret  # type: ignore[no-redef]

try:
    from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowNotFoundException
except ImportError:  # pragma: no cover
    from airflow.exceptions import (  # type: ignore[no-redef]
        AirflowException,
        AirflowFailException,
        AirflowNotFoundException,
    )

from typing import Any

from airflow import __version__ as AIRFLOW_VERSION
from airflow.configuration import conf
from packaging.version import Version

#: Airflow 3.3+: the task context has ``task_state_store`` (a retry can resume its earlier try's job).
AIRFLOW_V_3_3_PLUS = Version(Version(AIRFLOW_VERSION).base_version) >= Version("3.3.0")


def task_state_store(context: Any) -> Any | None:
    """The task instance's state store, which survives retries (Airflow 3.3+), or ``None``.

    Source: Airflow 3.3 added ``task_state_store`` to the task context (the store behind
    ``airflow.sdk.bases.resumablejobmixin.ResumableJobMixin``); Airflow 3.0-3.2 have no such key.
    ``None`` also when ``execute()`` is called with a plain dict that lacks it.

    :param context: the task context (a mapping), or anything else (then ``None``).
    :returns: an object with ``get(key)``, ``set(key, value)`` and ``delete(key)``, or ``None``.
    """
    return context.get("task_state_store") if hasattr(context, "get") else None


def is_object_storage_path(target: Any) -> bool:
    """Whether ``target`` is an ``ObjectStoragePath`` (any fsspec-backed path) rather than a local path.

    ``isinstance(target, os.PathLike)`` does not tell: with universal-pathlib < 0.3 (Airflow 3.0
    and 3.1; 3.1.8 requires ``universal-pathlib<0.3.0``) an ``ObjectStoragePath`` subclasses
    ``pathlib.Path``, so ``s3://bucket/lake`` would be taken for a local directory. Its ``fs``
    attribute (the fsspec filesystem), which strings and ``pathlib`` paths lack, does.

    :param target: a ``str``, ``os.PathLike`` or ``ObjectStoragePath``.
    """
    return not isinstance(target, str) and hasattr(target, "fs")


def try_number(context: Any) -> int | None:
    """The running try's number (1 for the first) from the context's task instance, if any."""
    ti = context.get("ti") if hasattr(context, "get") else None
    number = getattr(ti, "try_number", None)
    return number if isinstance(number, int) else None


__all__ = [
    "AIRFLOW_VERSION",
    "AIRFLOW_V_3_3_PLUS",
    "AirflowException",
    "AirflowFailException",
    "AirflowNotFoundException",
    "Asset",
    "BaseHook",
    "BaseOperator",
    "BaseSensorOperator",
    "Context",
    "ObjectStoragePath",
    "PokeReturnValue",
    "conf",
    "is_object_storage_path",
    "mask_secret",
    "task_state_store",
    "try_number",
]
