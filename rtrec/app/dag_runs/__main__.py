"""``python -m rtrec.app.dag_runs --serve DAGS_FOLDER [--warm]``: the runner process that
:class:`rtrec.app.dag_runs.DagRunner` starts."""

from rtrec.app.dag_runs.worker import main

raise SystemExit(main())
