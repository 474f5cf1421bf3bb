"""The hand-encoded values are byte for byte what Feast's protos serialize to."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from feast.protos.feast.types.Value_pb2 import StringList, Value
from google.protobuf.timestamp_pb2 import Timestamp
from rtrec.features.online_writer import (
    encode_double,
    encode_int64,
    encode_string,
    encode_string_list,
    encode_timestamp_ms,
)


@pytest.mark.parametrize("v", [0, 1, 127, 128, 300, 4095, 4096, 2**31, 2**62, -1, -(2**40)])
def test_int64(v: int) -> None:
    assert encode_int64(v) == Value(int64_val=v).SerializeToString()


@pytest.mark.parametrize("v", [0.0, 1.5, -2.25, 1e300, 123456.789])
def test_double(v: float) -> None:
    assert encode_double(v) == Value(double_val=v).SerializeToString()


@pytest.mark.parametrize("v", ["", "i1", "é" * 100, "x" * 300])
def test_string(v: str) -> None:
    assert encode_string(v) == Value(string_val=v).SerializeToString()


@pytest.mark.parametrize(
    "v", [[], ["a"], ["i1", "i2", ""], [f"item-{i}" for i in range(20)], ["é" * 200]]
)
def test_string_list(v: list[str]) -> None:
    assert encode_string_list(v) == Value(string_list_val=StringList(val=v)).SerializeToString()


@pytest.mark.parametrize("ms", [0, 999, 1000, 1_700_000_000_000, 1_700_000_000_123])
def test_timestamp_matches_feast(ms: int) -> None:
    ts = Timestamp()
    ts.FromDatetime(datetime.fromtimestamp(ms / 1000, tz=UTC).replace(microsecond=ms % 1000 * 1000))
    assert encode_timestamp_ms(ms) == ts.SerializeToString()
