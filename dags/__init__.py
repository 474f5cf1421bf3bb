"""Airflow DAGs and reusable operators (the orchestration of every stage)."""
