"""``rtrec demo``: the main job, the whole loop on the embedded default.

stack up -> data (synthetic with a shift, or MovieLens) -> replay through Kafka into the
feature store -> the Airflow ``rtrec_training`` DAG (Spark training set, two-tower,
evaluation, MLflow, FAISS, promotion) -> BentoML service -> a burst of HTTP requests with
feedback -> the shifted part of the stream -> the ``rtrec_drift_monitor`` DAG (Evidently
verdict, alert, triggers training) -> the triggered training run -> hot swap -> report
-> stop. DAG runs go through one warm :class:`rtrec.app.dag_runs.DagRunner` (Airflow's in-process
runner on the embedded metadata DB); ``--keep-running`` also starts the Airflow UI to browse them.
Each step calls one stage's public API; the demo adds progress, timing and the report.

The demo waits on the offline event log's watermark (``rtrec.streaming.wait_for_offline_log``),
never on time: after each publish until the log holds every event published, and the
drift check itself judges only windows the log covers. A step it promised that did not
happen (drift not judged, retraining not triggered, no swap) is shown as skipped with its
reason, and the demo then exits non-zero; a gate that refuses the new model is an outcome
("not promoted: reason"), not a failure.

The package by role: :mod:`~rtrec.app.demo.command` (the command, the steps in order, the
end), :mod:`~rtrec.app.demo.steps` and :mod:`~rtrec.app.demo.model_steps` (one function a
step, each taking the run's :class:`~rtrec.app.demo.context.DemoContext`),
:mod:`~rtrec.app.demo.runner` (timing, skipped steps with their reason, the exit code),
:mod:`~rtrec.app.demo.summary` and :mod:`~rtrec.app.demo.html_report` (what it prints and
writes). ``--profile cluster`` runs the loop on the cluster profile's engines:
:mod:`~rtrec.app.demo.cluster` (its steps, the embedded ones reused where they fit),
:mod:`~rtrec.app.demo.cluster_command` (its run and end) and
:mod:`~rtrec.app.demo.engines` (which engine did each step's work, read from the engines).
"""

from rtrec.app.demo.command import demo

__all__ = ["demo"]
