"""The config in the URL: round trips, only non-default fields, and garbage that falls back with a notice."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gru_explainer import ExplainConfig, Limits
from gru_explainer.explain import compile_target
from gru_explainer.urlstate import (
    FIELD_NAMES,
    ViewParam,
    config_from_query,
    config_to_query,
    view_from_query,
    view_to_query,
)

DEFAULT = ExplainConfig()
ROUND_TRIP = [
    DEFAULT,
    ExplainConfig(cell="lstm", bidirectional=True, target="y[:, 3].sum()"),
    ExplainConfig(cell="rnn_relu", num_layers=4, hidden_size=7, input_size=1, seq_len=1, batch_size=1, seed=123456),
    ExplainConfig(head="linear", head_size=9, target="out[:, -1].sum() * 0.5", dtype="float64", device="auto"),
    ExplainConfig(weight_scale=0.37),
    ExplainConfig(weight_scale=10.0, target="(y[:, -1] ** 2).mean()"),
    ExplainConfig.preset("seed-answer-gru"),
    ExplainConfig(target="output[..., 1:8:2].abs().sum(1).norm() / 3 - -h_n[0, :, 2].mean()"),
]


@pytest.mark.parametrize("cfg", ROUND_TRIP, ids=range(len(ROUND_TRIP)))
def test_round_trip(cfg: ExplainConfig) -> None:
    query = config_to_query(cfg)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in query.items())
    assert config_from_query(query) == (cfg, [])


def test_only_non_default_fields_are_written() -> None:
    assert config_to_query(DEFAULT) == {}
    query = config_to_query(DEFAULT.replace(cell="lstm", bidirectional=True))
    assert query == {"cell": "lstm", "bidirectional": "true"}


def test_list_values_use_the_last_one() -> None:
    cfg, notices = config_from_query({"seq_len": ["3", "7"], "cell": []})
    assert cfg.seq_len == 7 and cfg.cell == "gru"
    assert notices  # an empty value for cell is not a cell


GARBAGE = [
    ("num_layers", "9", "between 1 and 4"),
    ("num_layers", "0", "between 1 and 4"),
    ("num_layers", "two", "between 1 and 4"),
    ("hidden_size", "1.5", "between 1 and 256"),
    ("hidden_size", "99999999999999999999999", "between 1 and 256"),
    ("seq_len", "-3", "between 1 and 512"),
    ("batch_size", "", "between 1 and 64"),
    ("seed", "-1", "between 0 and"),
    ("cell", "transformer", "gru, lstm"),
    ("head", "mlp", "none, linear"),
    ("dtype", "float16", "float32, float64"),
    ("bidirectional", "maybe", "true or false"),
    ("weight_scale", "nan", "> 0 and <= 10"),
    ("weight_scale", "-1", "> 0 and <= 10"),
    ("weight_scale", "1e309", "> 0 and <= 10"),
    ("weight_scale", "abc", "> 0 and <= 10"),
    ("device", "cuda:7", "available"),
    ("device", "tpu", "available"),
    ("target", "__import__('os').system('id')", "default target"),
    ("target", "c_n.sum()", "lstm"),
    ("target", "out.sum()", "head"),
    ("target", "y[:, 99].sum()", "default target"),
    ("target", "y", "scalar"),
    ("target", "   ", "default"),
    ("target", "y.sum()" * 200, "default"),
]


@pytest.mark.parametrize(("field", "raw", "allowed"), GARBAGE)
def test_garbage_falls_back_to_the_default_with_a_notice(field: str, raw: str, allowed: str) -> None:
    cfg, notices = config_from_query({field: raw, "cell": "lstm"} if field == "device" else {field: raw})
    assert getattr(cfg, field) == getattr(DEFAULT, field)
    assert len(notices) == 1, notices
    assert field in notices[0] and allowed in notices[0], notices[0]
    cfg.validate()


def test_unknown_keys_get_a_notice_and_page_keys_do_not() -> None:
    cfg, notices = config_from_query({"bogus": "1", "explorer.log": "0", "sweep": "x"}, page_keys={"sweep"})
    assert cfg == DEFAULT
    assert len(notices) == 1 and "bogus" in notices[0]


def test_answer_gru_takes_one_layer_one_direction() -> None:
    cfg, notices = config_from_query({"cell": "answer_gru", "bidirectional": "true"})
    assert (cfg.cell, cfg.num_layers, cfg.bidirectional) == ("answer_gru", 1, False)
    assert len(notices) == 1 and "answer_gru" in notices[0]


def test_sizes_valid_alone_but_too_large_together() -> None:
    query = {"batch_size": "64", "seq_len": "512", "hidden_size": "256", "num_layers": "4", "bidirectional": "true"}
    cfg, notices = config_from_query(query)
    cfg.validate()
    assert notices and all("state-size limit" in n for n in notices)
    assert cfg.hidden_size == 256 and cfg.num_layers == 4  # reset the fewest fields, in a documented order


def test_limits_can_be_raised() -> None:
    cfg, notices = config_from_query({"num_layers": "8"}, limits=Limits.local())
    assert cfg.num_layers == 8 and notices == []


def test_non_text_values_never_raise() -> None:
    cfg, notices = config_from_query({"seq_len": None, 3: "x", "cell": ["lstm", 5]})  # type: ignore[dict-item]
    cfg.validate()
    assert notices


_keys = st.sampled_from([*FIELD_NAMES, "bogus", "a.b"])
_values = st.one_of(st.text(max_size=30), st.integers().map(str), st.floats().map(str),
                    st.sampled_from(["true", "lstm", "answer_gru", "linear", "float64", "auto", "y.sum()", "c_n.sum()",
                                     "out.sum()", "512", "64", "256", "4"]))


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(_keys, st.one_of(_values, st.lists(_values, max_size=3)), max_size=8))
def test_any_query_gives_a_valid_config(params: dict) -> None:
    cfg, notices = config_from_query(params)
    cfg.validate()
    compile_target(cfg)
    assert all(isinstance(n, str) and n for n in notices)
    # Writing it back and reading again is clean (a stale URL is repaired once).
    assert config_from_query(config_to_query(cfg)) == (cfg, [])


# --- view parameters (page-owned, dotted keys) ------------------------------------------------------------------------

VIEW_SPECS = (ViewParam("explorer.log", bool, True), ViewParam("explorer.batch", int, 0, low=0, high=63),
              ViewParam("explorer.layer", int, None, low=0, high=3),
              ViewParam("explorer.direction", str, "forward", choices=("forward", "reverse")))


@pytest.mark.parametrize("values", [
    {"explorer.log": False}, {"explorer.batch": 5}, {"explorer.layer": 0}, {"explorer.direction": "reverse"},
    {"explorer.log": False, "explorer.batch": 63, "explorer.layer": 3, "explorer.direction": "reverse"},
])
def test_view_values_round_trip(values: dict) -> None:
    query = view_to_query(values, VIEW_SPECS)
    assert all(isinstance(v, str) for v in query.values())
    assert view_from_query(query, VIEW_SPECS) == (values, [])


def test_view_defaults_are_not_written() -> None:
    assert view_to_query({"explorer.log": True, "explorer.batch": 0, "explorer.layer": None,
                          "explorer.direction": "forward"}, VIEW_SPECS) == {}


@pytest.mark.parametrize(("key", "raw"), [("explorer.log", "maybe"), ("explorer.batch", "-1"),
                                          ("explorer.batch", "64"), ("explorer.batch", "1.5"),
                                          ("explorer.direction", "sideways"), ("explorer.layer", "x" * 700)])
def test_bad_view_values_are_dropped_with_a_notice(key: str, raw: str) -> None:
    values, notices = view_from_query({key: raw, "cell": "lstm"}, VIEW_SPECS)
    assert values == {} and len(notices) == 1 and key in notices[0]
