"""Attribution of outcomes to answers: the window's edges, request ids, redelivery,
outcomes that find no answer, and impressions read after the click on them."""

from __future__ import annotations

import itertools
import json
from types import SimpleNamespace
from typing import Any

from rtrec.streaming.attribution import NO_EXPERIMENT, Tally, UserJoin, attribute

from rtrec.events import pack_impressions

IMP, EV = "imps", "events"
WINDOW = 30 * 60_000
T0 = 1_750_000_000_000
NOW = T0 + 10 * WINDOW
EXP = "7-vs-8"
_offsets = itertools.count()


def impression(
    request_id: str, ts: int, items: list[str], *, user: str = "u1", variant: str = "champion"
) -> Any:
    body = {
        "request_id": request_id,
        "ts": ts,
        "user_id": user,
        "user_id_hash": f"h:{user}",
        "variant": variant,
        "experiment": EXP,
        "model_version": "7",
        "k": len(items),
        "items": [{"item_id": i, "position": n, "score": 1.0} for n, i in enumerate(items, 1)],
        "fallback": False,
        "fallback_reason": None,
    }
    return record(IMP, pack_impressions([body]), None)


def event(item: str, ts: int, etype: str = "click", *, user: str = "u1", rid: str | None = None):
    body = {"user_id": user, "item_id": item, "event_type": etype, "ts": ts}
    if rid is not None:
        body["request_id"] = rid
    return record(EV, json.dumps(body).encode(), user)


def record(topic: str, value: bytes, user: str | None, partition: int = 0) -> Any:
    key = user.encode() if user is not None else None  # impressions: unkeyed batches
    return SimpleNamespace(
        topic=topic, partition=partition, offset=next(_offsets), key=key, value=value
    )


class Store:
    """What Redis would hold between batches: applied offsets and join states."""

    def __init__(self) -> None:
        self.applied: dict[tuple[str, int], int] = {}
        self.joins: dict[str, bytes] = {}

    def load(self, users: list[str]) -> tuple[dict[tuple[str, int], int], dict[str, UserJoin]]:
        return dict(self.applied), {u: UserJoin.loads(self.joins.get(u)) for u in users}

    def run(self, records: list[Any]) -> Tally:
        tally = attribute(
            records, load=self.load, impressions_topic=IMP, window_ms=WINDOW, now_ms=NOW
        )
        for where, high in tally.high.items():  # what the commit script writes
            self.applied[where] = max(high, self.applied.get(where, -1))
        self.joins.update({u: s.dumps() for u, s in tally.joins.items()})
        return tally


def counts(tally: Tally, variant: str = "champion") -> dict[str, float]:
    return tally.arms[(EXP, variant)].counts


def rid(n: int) -> str:
    return f"{n:032x}"


def test_an_outcome_exactly_at_the_window_counts_and_one_ms_later_does_not() -> None:
    store = Store()
    store.run([impression(rid(1), T0, ["a", "b"])])
    at_edge = store.run([event("b", T0 + WINDOW)])
    assert counts(at_edge) == {"click": 1, "rr_sum": 0.5, "clicked_impressions": 1}
    assert at_edge.arms[(EXP, "champion")].clickers == {"h:u1"}

    late = Store()
    late.run([impression(rid(2), T0, ["a", "b"])])
    past = late.run([event("b", T0 + WINDOW + 1)])
    assert past.arms == {} and past.unattributed == {"click": 1}


def test_the_latest_answer_that_showed_the_item_gets_the_outcome() -> None:
    store = Store()
    first = store.run(
        [
            impression(rid(1), T0, ["a", "b"]),
            impression(rid(2), T0 + 1000, ["c", "a"]),
            impression(rid(3), T0 + 2000, ["d"]),
        ]
    )
    assert counts(first) == {"impressions": 3}
    out = store.run([event("a", T0 + 3000), event("a", T0 + 4000, "purchase")])
    assert counts(out) == {"click": 1, "rr_sum": 0.5, "clicked_impressions": 1, "purchase": 1}
    before = store.run([event("d", T0 + 1999)])  # before the only answer showing it
    assert before.arms == {} and before.unattributed == {"click": 1}


def test_redelivered_records_count_once() -> None:
    store = Store()
    batch = [impression(rid(1), T0, ["a"]), event("a", T0 + 10), event("a", T0 + 20, "add_to_cart")]
    once = store.run(batch)
    assert counts(once)["impressions"] == counts(once)["click"] == 1
    assert once.arms[(EXP, "champion")].counts["add_to_cart"] == 1
    again = store.run(batch)  # the same records, same offsets: a redelivery
    assert again.arms == {} and again.skipped == 3 and again.unattributed == {}


def test_an_impression_written_twice_by_a_producer_retry_counts_once() -> None:
    store = Store()
    out = store.run([impression(rid(1), T0, ["a"]), impression(rid(1), T0, ["a"])])
    assert counts(out) == {"impressions": 1}


def test_an_outcome_without_an_answer_is_unattributed_not_lost() -> None:
    store = Store()
    out = store.run([event("x", T0, user="u2"), event("y", T0, "purchase", user="u2")])
    assert out.arms == {} and out.unattributed == {"click": 1, "purchase": 1}
    assert [o.item_id for o in UserJoin.loads(store.joins["u2"]).waiting] == ["x", "y"]
    views = store.run([event("x", T0, "view", user="u3")])  # not an outcome: nothing at all
    assert views.arms == {} and views.unattributed == {} and views.joins == {}


def test_an_impression_read_after_its_click_takes_the_click_over() -> None:
    store = Store()
    early = store.run([event("b", T0 + 50, rid=rid(9))])
    assert early.unattributed == {"click": 1}
    late = store.run([impression(rid(9), T0, ["a", "b"])])
    assert counts(late) == {"impressions": 1, "click": 1, "rr_sum": 0.5, "clicked_impressions": 1}
    assert late.unattributed == {"click": -1} and late.late == {"click": 1}
    assert UserJoin.loads(store.joins["u1"]).waiting == []


def test_a_request_id_naming_an_answer_without_the_item_attributes_nothing() -> None:
    store = Store()
    store.run([impression(rid(1), T0, ["a", "b"]), impression(rid(2), T0 + 5, ["c"])])
    out = store.run([event("c", T0 + 10, rid=rid(1))])
    # not inferred from the other answer that did show "c": the id is the client's word
    assert out.arms == {} and out.unattributed == {"click": 1}
    assert UserJoin.loads(store.joins["u1"]).waiting == []  # final: nothing to wait for
    named = store.run([event("b", T0 + 20, rid=rid(1))])
    assert counts(named) == {"click": 1, "rr_sum": 0.5, "clicked_impressions": 1}


def test_a_named_answer_older_than_the_window_gets_nothing() -> None:
    store = Store()
    store.run([impression(rid(1), T0, ["a"])])
    out = store.run([event("a", T0 + WINDOW + 1, rid=rid(1))])
    assert out.arms == {} and out.unattributed == {"click": 1}


def test_clicks_count_per_impression_and_per_user_by_variant() -> None:
    store = Store()
    out = store.run(
        [
            impression(rid(1), T0, ["a", "b", "c"]),
            impression(rid(2), T0, ["a", "b", "c"], user="u2", variant="challenger"),
            event("c", T0 + 1),
            event("b", T0 + 2),
            event("a", T0 + 3, user="u2"),
        ]
    )
    champion, challenger = out.arms[(EXP, "champion")], out.arms[(EXP, "challenger")]
    assert champion.counts["click"] == 2 and champion.counts["clicked_impressions"] == 1
    assert abs(champion.counts["rr_sum"] - (1 / 3 + 1 / 2)) < 1e-12
    assert challenger.counts["rr_sum"] == 1.0
    assert champion.users == {"h:u1"} and challenger.users == challenger.clickers == {"h:u2"}
    # Per user, what the variance needs: impressions and clicked impressions (two clicks
    # on one answer are one clicked impression).
    assert champion.per_user == {"h:u1": [1, 1]} and challenger.per_user == {"h:u2": [1, 1]}


def test_per_user_counts_follow_impressions_and_first_clicks() -> None:
    out = Store().run(
        [
            impression(rid(1), T0, ["a", "b"]),
            impression(rid(2), T0 + 10, ["c", "d"]),
            impression(rid(3), T0 + 20, ["e"]),
            event("a", T0 + 30, rid=rid(1)),
            event("b", T0 + 31, rid=rid(1)),
            event("d", T0 + 32, rid=rid(2)),
        ]
    )
    assert out.arms[(EXP, "champion")].per_user == {"h:u1": [3, 2]}


def test_bad_impressions_are_counted_and_answers_without_a_split_have_their_own_bucket() -> None:
    store = Store()
    (body,) = json.loads(impression(rid(1), T0, ["a"]).value)["impressions"]
    body.pop("experiment")
    out = store.run(
        [
            record(IMP, b"not json", None),
            record(IMP, pack_impressions([body]), None),
            record(EV, b"{}", "u1"),
        ]
    )
    assert out.invalid == 2 and out.arms[(NO_EXPERIMENT, "champion")].counts == {"impressions": 1}


def test_a_state_keeps_only_what_lies_within_the_window() -> None:
    store = Store()
    store.run([impression(rid(n), T0 + n, ["a"]) for n in range(3)])
    store.run([impression(rid(9), T0 + 2 * WINDOW, ["b"])])
    state = UserJoin.loads(store.joins["u1"])
    assert [s.request_id for s in state.shown] == [rid(9)]


def test_a_committed_tally_moves_the_prometheus_counters() -> None:
    from prometheus_client import REGISTRY
    from rtrec.streaming import metrics

    def value(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    before = {
        "imp": value("rtrec_experiment_impressions_total", experiment=EXP, variant="champion"),
        "click": value(
            "rtrec_experiment_outcomes_total",
            experiment=EXP,
            variant="champion",
            event_type="click",
        ),
        "lost": value("rtrec_experiment_unattributed_total", event_type="purchase"),
        "late": value("rtrec_experiment_late_attributed_total", event_type="click"),
    }
    store = Store()
    metrics.count_tally(store.run([event("a", T0 + 5, rid=rid(5)), event("z", T0, "purchase")]))
    metrics.count_tally(store.run([impression(rid(5), T0, ["a"])]))
    assert (
        value("rtrec_experiment_impressions_total", experiment=EXP, variant="champion")
        == before["imp"] + 1
    )
    click = value(
        "rtrec_experiment_outcomes_total", experiment=EXP, variant="champion", event_type="click"
    )
    assert click == before["click"] + 1
    # found nothing on arrival (both), one taken over once its impression came
    assert value("rtrec_experiment_unattributed_total", event_type="purchase") == before["lost"] + 1
    assert value("rtrec_experiment_late_attributed_total", event_type="click") == before["late"] + 1


def test_one_record_of_many_users_impressions_credits_each_user() -> None:
    """The service sends impressions in batches: one record, several users and answers."""
    bodies = [
        json.loads(impression(rid(n), T0, ["a", "b"], user=user).value)["impressions"][0]
        for n, user in enumerate(("u1", "u2", "u3"), start=1)
    ]
    out = Store().run([record(IMP, pack_impressions(bodies), None), event("b", T0 + 5, user="u2")])
    arm = out.arms[(EXP, "champion")]
    assert arm.counts == {"impressions": 3, "click": 1, "rr_sum": 0.5, "clicked_impressions": 1}
    assert arm.users == {"h:u1", "h:u2", "h:u3"} and arm.clickers == {"h:u2"}
