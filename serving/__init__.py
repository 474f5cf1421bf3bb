"""Serving: the BentoML recommendation API.

Public API (what the app layer uses)::

    rtrec.serving.service:Recommender    # the BentoML service (`rtrec serve`), by name
    Engine(settings)                      # the recommendation path without HTTP
    serve_command(host, port)             # the `bentoml serve` command line of one server
    serve_env(work_dir, port)             # ... and the environment it needs of its own
    check_bind(serving_settings)          # refuses an exposed address without API keys
    experiment_status(settings) -> dict   # the A/B readout (GET /experiments)
    readout(champion, challenger, ...), readout_for(settings, ...), verdict(...), Arm
                                          # ... its statistics, pure functions
    SimulatedUsers(truth, base_url=...).run(n) # synthetic users clicking by their true
    ClickModel(attraction_scale, position_decay)  # taste (rtrec.data.ground_truth)
    run_until_decided(settings, truth, base_url=..., experiment=...) -> Decided
                                          # ... until the A/B readout decides, read once

Test and benchmark helpers are not part of it; they import their modules directly
(``rtrec.serving.process.running_server``, ``rtrec.serving.synthetic.synthetic_bundle``,
``rtrec.serving.loadreport.run_rate``).

Everything is imported lazily, so ``import rtrec.serving`` loads neither BentoML nor torch.
"""

from rtrec.lazy import lazy_exports

_EXPORTS = {
    "Engine": "rtrec.serving.retrieval",
    "Arm": "rtrec.serving.experiment_stats",
    "Readout": "rtrec.serving.experiment_stats",
    "readout": "rtrec.serving.experiment_stats",
    "readout_for": "rtrec.serving.experiment_stats",
    "verdict": "rtrec.serving.experiment_stats",
    "experiment_status": "rtrec.serving.experiment_readout",
    "ClickModel": "rtrec.serving.simulator",
    "SimulatedUsers": "rtrec.serving.simulator",
    "SimulationResult": "rtrec.serving.simulator",
    "run_until_decided": "rtrec.serving.simulator",
    "Decided": "rtrec.serving.simulator",
    "check_bind": "rtrec.serving.launch",
    "serve_command": "rtrec.serving.launch",
    "serve_env": "rtrec.serving.launch",
}
__all__, __getattr__ = lazy_exports(__name__, _EXPORTS)
