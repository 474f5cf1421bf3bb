"""Settings of the monitoring stage (``monitoring`` in :class:`rtrec.config.Settings`).

Kept out of :mod:`rtrec.config` so that module stays one screenful per stage, like
:mod:`rtrec.cluster_settings`; loaded the same way (``RTREC_MONITORING__*`` variables,
then the ``RTREC_CONFIG`` file).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

_STRICT = ConfigDict(extra="forbid")


class MonitoringSettings(BaseModel):
    model_config = _STRICT

    workspace: Path | None = None
    """Evidently workspace; default ``<work_dir>/evidently``."""
    ui_port: int = 18000
    """Port of ``rtrec monitor ui``."""
    drift_share_threshold: float = 0.5
    """Share of drifted columns above which a window counts as drifted."""
    offline_coverage: Literal["wait", "as_of", "unchecked"] = "wait"
    """How a drift check makes sure the stream's offline log holds the windows it judges:
    ``wait`` until the log's watermark covers them (an error after ``offline_wait_s``);
    ``as_of``: judge at once, as of the watermark, and say so in the verdict;
    ``unchecked``: read the log as it is (a log not written by the stream processor)."""
    offline_wait_s: float = Field(300.0, ge=0.0)
    """How long a drift check waits for the offline log to cover its windows. The log is
    flushed every couple of seconds behind the stream, so only a stopped, stuck or far
    behind processor reaches this."""
    srm_p_threshold: float = Field(0.001, gt=0.0, lt=1.0)
    """An experiment whose arms' sizes fit the configured split with a chi-square p-value
    below this has a sample ratio mismatch: its readout is not trusted."""
    min_detectable_effect: float = Field(0.05, gt=0.0)
    """Smallest relative lift of the click rate an experiment must be able to detect (at
    alpha 0.05, power 0.8): sets the sample size per arm before a verdict."""
    attribution_window_s: float = Field(1800.0, gt=0.0)
    """A click, add-to-cart or purchase without a ``request_id`` counts for the user's
    latest answer that showed the item at most this long before it (event time)."""
