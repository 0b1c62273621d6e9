"""Concurrent sessions through the app's own cached functions: many threads, different configs, each gets exactly its
own numbers (equal to a sequential, uncached computation), while other threads churn the global RNG.

Called outside a Streamlit server ("bare mode": st.cache_data works, with a warning), as the server's script threads
call them. The page caches live in `ui` (cached_explain, cached_profile, cached_graph, cached_compare,
cached_census), so this covers every cached core call the pages make.
"""

from __future__ import annotations

import dataclasses
import random
import threading
from concurrent.futures import ThreadPoolExecutor

import pandas as pd
import pytest
import streamlit as st
import torch

import ui
from gru_explainer import ExplainConfig, explain
from gru_explainer.compare import compare, fused_graph_census
from gru_explainer.flow import profile_of
from gru_explainer.graph import backward_graph

CONFIGS = [
    ExplainConfig(seed=11),
    ExplainConfig(cell="lstm", bidirectional=True, seq_len=8, seed=12, target="c_n.sum() + y[:, 2].sum()"),
    ExplainConfig(cell="rnn_tanh", num_layers=3, hidden_size=12, seq_len=9, seed=13, target="y.mean()"),
    ExplainConfig(cell="rnn_relu", num_layers=1, hidden_size=16, seq_len=7, seed=14, weight_scale=0.5),
    ExplainConfig(cell="answer_gru", num_layers=1, seq_len=6, seed=15, target="(y[:, -1] ** 2).mean()"),
    ExplainConfig(head="linear", head_size=3, seed=16, target="out[:, -1].sum()"),
    ExplainConfig(dtype="float64", seq_len=11, seed=17, target="h_n.sum()"),
    ExplainConfig(cell="gru", num_layers=4, hidden_size=6, batch_size=3, seq_len=5, seed=18, target="y[:, 0].sum()"),
    ExplainConfig(cell="lstm", input_size=7, hidden_size=10, seq_len=12, seed=19, weight_scale=2.0),
    ExplainConfig(cell="rnn_tanh", bidirectional=True, hidden_size=9, seq_len=10, seed=20,
                  target="y[:, -3].abs().sum()"),
]
"""Ten sessions' configs: every cell, head, dtype and several targets, all distinct."""
THREADS = 10


def _numbers(report) -> list[torch.Tensor]:
    return [report.hidden_grad, report.stacked_grad, report.input_grad, report.output,
            torch.tensor(report.target_value, dtype=torch.float64)]


@pytest.fixture(autouse=True)
def fresh_caches():
    """Empty caches: the threads must compute concurrently, not read what an earlier test stored."""
    st.cache_data.clear()
    yield
    st.cache_data.clear()


def _churn_rng(stop: threading.Event) -> None:
    """Another 'session' using the global RNG the whole time (reseeding it every millisecond or so, between the
    workers' steps): the explanations must not depend on it. The pause keeps the churners from taking most of the GIL,
    which only slowed the workers down (any change of the global RNG state shows up in a result that reads it)."""
    while not stop.wait(0.001):
        torch.manual_seed(random.randrange(2**31))
        torch.rand(64)


def _run_concurrently(job, items: list) -> list:
    stop = threading.Event()
    churners = [threading.Thread(target=_churn_rng, args=(stop,)) for _ in range(2)]
    for thread in churners:
        thread.start()
    try:
        with ThreadPoolExecutor(max_workers=THREADS) as pool:
            return list(pool.map(job, items))
    finally:
        stop.set()
        for thread in churners:
            thread.join()


def test_cached_explain_from_many_threads_gives_each_its_own_numbers() -> None:
    expected = {cfg: _numbers(explain(cfg)) for cfg in CONFIGS}  # sequential, uncached
    jobs = [cfg for _ in range(3) for cfg in CONFIGS]  # every config three times, interleaved: misses and hits
    random.Random(0).shuffle(jobs)
    reports = _run_concurrently(ui.cached_explain, jobs)
    for cfg, report in zip(jobs, reports, strict=True):
        assert report is not None and report.config == cfg
        for got, want in zip(_numbers(report), expected[cfg], strict=True):
            assert torch.equal(got, want), cfg
    assert len({float(r.target_value) for r in reports}) == len(CONFIGS)


def test_page_caches_from_many_threads_give_each_its_own_result() -> None:
    """The flow page's profile, the graph page's drawing (every op, parameters shown), the devices page's comparison
    and census."""
    tiny = [cfg.replace(seq_len=3, num_layers=min(cfg.num_layers, 2), target="y[:, -1].sum()") for cfg in CONFIGS]
    fused = [cfg for cfg in CONFIGS if cfg.cell != "answer_gru"][:8]
    jobs = ([("profile", cfg) for cfg in CONFIGS] + [("graph", cfg) for cfg in tiny]
            + [("compare", cfg) for cfg in CONFIGS[:8]] + [("census", cfg) for cfg in fused])
    jobs = jobs * 2
    random.Random(1).shuffle(jobs)

    def call(job):
        kind, cfg = job
        if kind == "profile":
            return ui.cached_profile(cfg)
        if kind == "graph":
            return ui.cached_graph(cfg, True, True)[0]
        if kind == "compare":
            return ui.cached_compare(cfg, ("cpu",), 1).drop(columns="time_ms")
        return ui.cached_census(cfg, ("cpu",))

    def sequential(job):
        kind, cfg = job
        if kind == "profile":
            return profile_of(cfg)
        if kind == "graph":
            return backward_graph(cfg, show_parameters=True).to_dot(rankdir="TB", legend=False)
        if kind == "compare":
            return compare(cfg, devices=["cpu"], repeats=1).drop(columns="time_ms")
        return fused_graph_census(cfg, devices=["cpu"])

    expected = {job: sequential(job) for job in set(jobs)}
    results = _run_concurrently(call, jobs)
    for job, got in zip(jobs, results, strict=True):
        want = expected[job]
        if isinstance(want, pd.DataFrame):
            pd.testing.assert_frame_equal(got.reset_index(drop=True), want.reset_index(drop=True))
        else:
            assert got == want, job


def test_cache_keys_cover_every_config_field() -> None:
    """Changing any single field gives a different cache entry: the report for exactly that config."""
    base = ExplainConfig(seq_len=6, hidden_size=8)
    variants = {"cell": "lstm", "num_layers": 3, "input_size": 4, "hidden_size": 9, "bidirectional": True,
                "head": "linear", "head_size": 4, "seq_len": 7, "batch_size": 3, "target": "y.sum()",
                "device": "auto", "dtype": "float64", "seed": 1, "weight_scale": 0.5}
    assert set(variants) == {f.name for f in dataclasses.fields(ExplainConfig)}
    first = ui.cached_explain(base)
    for name, value in variants.items():
        cfg = base.replace(**{name: value})
        report = ui.cached_explain(cfg)
        assert report is not None and report.config == cfg, name
        if name not in ("device", "head_size"):  # auto = cpu here; head_size without a head changes no number
            assert not _same(report, first), name


def _same(a, b) -> bool:
    return all(x.shape == y.shape and torch.equal(x, y) for x, y in zip(_numbers(a), _numbers(b), strict=True))


def test_a_cached_report_is_a_copy_per_caller() -> None:
    """No shared mutable state through the cache: one caller mutating its report cannot change another's."""
    cfg = ExplainConfig(seq_len=6, hidden_size=8, seed=3)
    mine = ui.cached_explain(cfg)
    want = mine.hidden_grad.clone()
    mine.hidden_grad.zero_()
    mine.module.weight_hh_l0.data.zero_()
    theirs = ui.cached_explain(cfg)
    assert torch.equal(theirs.hidden_grad, want)
    assert theirs.module.weight_hh_l0.abs().sum() > 0
