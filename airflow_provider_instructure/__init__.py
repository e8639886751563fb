"""Apache Airflow provider for Instructure's Data Access Platform (Canvas Data 2).

Kept import-light: Airflow loads the provider entry point in every process.
"""

from __future__ import annotations

__version__ = "0.2.0"
