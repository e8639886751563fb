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

from airflow.configuration import conf

__all__ = [
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
    "mask_secret",
]
