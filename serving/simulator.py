"""Simulated users: ask the service for recommendations and click what they truly like.

A synthetic data set's users have a known taste (:mod:`rtrec.data.ground_truth`). A
:class:`SimulatedUsers` client plays them against a running service: each step picks a
user, asks ``POST /recommend``, clicks each shown item with the click model's probability
for that user, item and position, and sends the clicks to ``POST /feedback`` with the
answer's ``request_id`` (batched, up to the route's 100 events). The stream processor then
attributes the clicks to the answer's impression, so the A/B readout sees the variants'
true click-through: a better model shows what users like higher up and is clicked more.

:func:`run_until_decided` runs an experiment to its decision the way it is meant to be
read: simulated users in threads until the readout leaves ``collecting``, then traffic
stops, the stream processor catches up with every answer and click sent, and the
verdict is read once, at that fixed horizon.

It lives in serving, not in the tests, so benchmarks (``bench/``) and the demo drive
experiments with it. A request the service refuses or fails raises: a simulation over
failed requests would measure nothing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from rtrec.config import Settings
from rtrec.data.ground_truth import GroundTruth
from rtrec.errors import InvalidInput, Unavailable

FEEDBACK_BATCH = 100
"""Events per ``/feedback`` call: the route's maximum."""
RATE_LIMITED_TRIES = 30
"""Tries of one request the service keeps answering 429 before the simulation fails."""


@dataclass(frozen=True)
class ClickModel:
    """The position-based click model's knobs (:meth:`GroundTruth.click_probability`)."""

    attraction_scale: float = 0.05
    position_decay: float = 1.0


@dataclass
class SimulationResult:
    """What the simulated users saw and did, per variant (as the service labelled it)."""

    answers: int = 0
    clicks: int = 0
    by_variant: dict[str, dict[str, int]] = field(default_factory=dict)
    """``{variant: {answers, clicks, clicked_answers}}``."""
    experiments: dict[str, int] = field(default_factory=dict)
    """Answers per ``experiment`` (``none`` for answers outside one)."""

    def add(self, answer: dict[str, Any], clicked: int) -> None:
        self.answers += 1
        self.clicks += clicked
        arm = self.by_variant.setdefault(
            str(answer.get("variant")), {"answers": 0, "clicks": 0, "clicked_answers": 0}
        )
        arm["answers"] += 1
        arm["clicks"] += clicked
        arm["clicked_answers"] += clicked > 0
        name = str(answer.get("experiment") or "none")
        self.experiments[name] = self.experiments.get(name, 0) + 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class SimulatedUsers:
    """Users of a synthetic data set, clicking on a service at ``base_url``.

    :param truth: the data set's ground truth (``ground_truth(cfg)``).
    :param users: who may be picked (uniformly, per step); default every generated user.
    :param client: an ``httpx.Client`` to use (default: one on ``base_url``).
    :param exclude_seen: the requests' ``exclude_seen`` (the API's default, True, hides
        the user's recent items, the clicked ones among them). The click model's taste
        does not tire of an item, so over many steps a simulation that hides what users
        clicked measures mostly how fast it runs out of items they like; long runs (a
        benchmark's many experiments on the same users) pass False.
    """

    def __init__(
        self,
        truth: GroundTruth,
        *,
        base_url: str,
        api_key: str | None = None,
        users: Sequence[str] | None = None,
        k: int = 10,
        click_model: ClickModel | None = None,
        seed: int = 0,
        timeout_s: float = 10.0,
        client: Any = None,
        exclude_seen: bool = True,
    ) -> None:
        import httpx

        self.truth = truth
        self.users = (
            list(users) if users is not None else [f"u{i}" for i in range(len(truth.cluster))]
        )
        if not self.users:
            raise InvalidInput("no users to simulate", field="users")
        self.k = k
        self.exclude_seen = exclude_seen
        self.click_model = click_model or ClickModel()
        self.rng = np.random.default_rng(seed)
        headers = {"X-API-Key": api_key} if api_key else {}
        self.client = client or httpx.Client(base_url=base_url, timeout=timeout_s)
        self.headers = headers
        self.pending: list[dict[str, Any]] = []
        self.rate_limited = 0
        """Answers of 429 waited out (the service's per-key rate limit)."""

    def clicked_positions(self, user_id: str, item_ids: Sequence[str]) -> list[int]:
        """Positions (1 = top) of the shown items this user clicks, each drawn on its own
        with the click model's probability."""
        m = self.click_model
        p = self.truth.click_probability(
            user_id,
            item_ids,
            attraction_scale=m.attraction_scale,
            position_decay=m.position_decay,
        )
        return [int(i) + 1 for i in np.flatnonzero(self.rng.random(len(p)) < p)]

    def step(self) -> tuple[dict[str, Any], int]:
        """One user, one answer, its clicks queued for ``/feedback``: (answer, clicks)."""
        user = self.users[int(self.rng.integers(len(self.users)))]
        body = {"user_id": user, "k": self.k, "exclude_seen": self.exclude_seen}
        answer = self._post("/recommend", body)
        items = [i["item_id"] for i in answer["items"]]
        now = int(time.time() * 1000)
        clicked = self.clicked_positions(user, items)
        for position in clicked:
            self.pending.append(
                {
                    "user_id": user,
                    "item_id": items[position - 1],
                    "event_type": "click",
                    "ts": now,
                    "request_id": answer["request_id"],
                }
            )
        if len(self.pending) >= FEEDBACK_BATCH:
            self.flush()
        return answer, len(clicked)

    def run(self, n_requests: int) -> SimulationResult:
        """``n_requests`` steps, then every queued click sent."""
        result = SimulationResult()
        for _ in range(n_requests):
            answer, clicks = self.step()
            result.add(answer, clicks)
        self.flush()
        return result

    def flush(self) -> None:
        """Send the queued clicks (in batches the route accepts)."""
        while self.pending:
            batch, self.pending = self.pending[:FEEDBACK_BATCH], self.pending[FEEDBACK_BATCH:]
            self._post("/feedback", {"events": batch})

    def close(self) -> None:
        self.flush()
        self.client.close()

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST and decode; a 429 waits as its ``Retry-After`` says (at most a second a
        time, as a polite client does) and tries again, up to :data:`RATE_LIMITED_TRIES`."""
        import httpx

        for _ in range(RATE_LIMITED_TRIES):
            try:
                resp = self.client.post(path, json=body, headers=self.headers)
            except httpx.HTTPError as exc:
                raise Unavailable(f"simulated users: {path} failed: {exc}") from exc
            if resp.status_code != 429:
                break
            self.rate_limited += 1
            time.sleep(min(float(resp.headers.get("Retry-After") or 0.1), 1.0))
        if resp.status_code >= 500:
            raise Unavailable(f"simulated users: {path} answered {resp.status_code}: {resp.text}")
        if resp.status_code >= 400:
            raise InvalidInput(f"simulated users: {path} refused ({resp.status_code}): {resp.text}")
        return resp.json()


@dataclass
class Decided:
    """An experiment run by :func:`run_until_decided`: its readout when it was read (the
    verdict is ``collecting`` only where ``max_answers`` ran out first), what the
    simulated users sent within it, and how long it took."""

    readout: dict[str, Any]
    sent: dict[str, int]
    seconds: float

    @property
    def verdict(self) -> str:
        return str(self.readout["verdict"])


def run_until_decided(
    settings: Settings,
    truth: GroundTruth,
    *,
    base_url: str,
    experiment: str,
    api_key: str | None = None,
    users: Sequence[str] | None = None,
    threads: int = 4,
    click_model: ClickModel | None = None,
    seed: int = 0,
    max_answers: int | None = None,
    catch_up_s: float = 60.0,
    exclude_seen: bool = True,
) -> Decided:
    """Simulated users on ``base_url`` until ``experiment``'s readout decides.

    Rounds of traffic (``threads`` users in parallel, each its own client and seed) run
    until the readout, lagging a little behind, leaves ``collecting``; then traffic stops
    and every queued click is sent, the stream processor is given ``catch_up_s`` to join
    every answer and click sent within the experiment, and the verdict read then is the
    decision. A verdict read before the arms are complete would be a peek; if the
    caught-up readout is below the sample size after all (the champion's rate moved it),
    another round runs. ``max_answers`` bounds the answers within the experiment: past it
    the caught-up readout is returned as it is. ``settings`` are the readout's (split,
    minimum detectable effect, Redis)."""

    def make(seed: int) -> SimulatedUsers:
        return SimulatedUsers(
            truth, base_url=base_url, api_key=api_key, users=users, click_model=click_model,
            seed=seed, exclude_seen=exclude_seen,
        )  # fmt: skip

    started = time.perf_counter()
    sent = {"answers": 0, "clicks": 0}
    while True:
        left = None if max_answers is None else max_answers - sent["answers"]
        sim = _Round(settings, experiment, make)
        for key, n in sim.run(threads, seed=seed, max_answers=left).items():
            sent[key] += n
        seed += 1000
        readout = _caught_up(settings, experiment, sent, catch_up_s)
        out_of_budget = max_answers is not None and sent["answers"] >= max_answers
        if readout["verdict"] != "collecting" or out_of_budget:
            return Decided(readout, sent, round(time.perf_counter() - started, 1))


class _Round:
    """One round of traffic of :func:`run_until_decided`."""

    def __init__(
        self, settings: Settings, experiment: str, make: Callable[[int], SimulatedUsers]
    ) -> None:
        self.settings, self.experiment, self.make = settings, experiment, make
        self.stop, self.errors = threading.Event(), list[Exception]()
        self.lock = threading.Lock()
        self.sent = {"answers": 0, "clicks": 0}

    def run(self, threads: int, *, seed: int, max_answers: int | None) -> dict[str, int]:
        workers = [
            threading.Thread(target=self._drive, args=(seed + n, max_answers), daemon=True)
            for n in range(threads)
        ]
        for w in workers:
            w.start()
        while not self.stop.wait(1.0):
            if _readout(self.settings, self.experiment)["verdict"] != "collecting":
                self.stop.set()
        for w in workers:
            w.join()
        if self.errors:
            raise self.errors[0]
        return self.sent

    def _drive(self, seed: int, max_answers: int | None) -> None:
        sim = self.make(seed)
        try:
            while not self.stop.is_set():
                answer, clicks = sim.step()
                if answer.get("experiment") != self.experiment:
                    continue  # served before the service split traffic onto it
                with self.lock:
                    self.sent["answers"] += 1
                    self.sent["clicks"] += clicks
                    if max_answers is not None and self.sent["answers"] >= max_answers:
                        self.stop.set()
            sim.close()  # sends the queued clicks
        except Exception as exc:  # raised by run(): a failed request ends the simulation
            self.errors.append(exc)
            self.stop.set()


def _readout(settings: Settings, experiment: str) -> dict[str, Any]:
    """``experiment``'s readout; ``collecting`` before its first impression lands."""
    from rtrec.serving.experiment_readout import experiment_status

    for judged in experiment_status(settings)["experiments"]:
        if judged["experiment"] == experiment:
            return judged
    return {"experiment": experiment, "verdict": "collecting", "variants": {}}


def _caught_up(
    settings: Settings, experiment: str, sent: dict[str, int], timeout_s: float
) -> dict[str, Any]:
    """The readout once it holds every answer and click sent; Unavailable naming both
    counts if the stream processor has not joined them within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        readout = _readout(settings, experiment)
        arms = readout["variants"].values()
        seen = {
            "answers": sum(a["impressions"] for a in arms),
            "clicks": sum(a["clicks"] for a in arms),
        }
        if all(seen[k] >= sent[k] for k in sent):
            return readout
        if time.monotonic() > deadline:
            raise Unavailable(
                f"experiment {experiment}: the readout holds {seen} after {timeout_s:g} s, "
                f"the simulated users sent {sent} (is the stream processor running?)"
            )
        time.sleep(0.5)
