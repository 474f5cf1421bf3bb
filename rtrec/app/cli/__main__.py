"""``python -m rtrec.app.cli``: the ``rtrec`` command where no console script is on PATH
(managed subprocesses start themselves this way with the running interpreter)."""

from rtrec.app.cli import main

main()
