"""Airflow reads its home at first import: point it at a throwaway directory for these tests."""

from __future__ import annotations

import os
import tempfile

from rtrec.app.embedded_airflow import dags_folder

os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="rtrec-airflow-unit-"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(dags_folder()))
