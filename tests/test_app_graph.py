"""AppTest of the autograd-graph page: defaults, widget changes, the DOT equals the core's, errors shown, the URL."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

from gru_explainer import ExplainConfig
from gru_explainer.graph import backward_graph

PAGE = str(Path(__file__).resolve().parents[1] / "app_pages" / "graph.py")


def _run(config: ExplainConfig | None = None, query: dict[str, str] | None = None) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=90)
    if config is not None:
        at.session_state["gx_config"] = config
    for key, value in (query or {}).items():
        at.query_params[key] = value
    return at.run()


def _dots(at: AppTest) -> list[str]:
    return [chart.proto.spec for chart in at.get("graphviz_chart")]


def _expected(cfg: ExplainConfig, show_parameters: bool = False, every_op: bool = False) -> list[str]:
    """The page's two charts for `cfg`: the graph (collapsed unless every_op) without its legend, then the legend."""
    graph = backward_graph(cfg, show_parameters=show_parameters)
    shown = graph if every_op else graph.collapsed()
    return [shown.to_dot(rankdir="TB", legend=False), shown.legend_dot()]


def test_defaults_draw_the_core_graph_on_one_screen() -> None:
    at = _run()
    assert not at.exception and not at.error
    assert _dots(at) == _expected(ExplainConfig(seq_len=2, num_layers=2))  # T = 2, steps collapsed, no parameters
    text = " ".join(m.value for m in at.markdown)
    assert "Into y" in text and "Into the next step" in text
    assert "`y[:, -1] (select)`" in text  # y's one consumer, read from the graph
    assert "`y = stack(h_0..h_1)` is a *new* tensor" in text
    assert "`z ⊙ h_0 (mul)`" in text and "`W_hh h_0 + b_hh (addmm)`" in text  # h_0's readers, from the full graph
    full = backward_graph(ExplainConfig(seq_len=2), show_parameters=False)
    caption = " ".join(c.value for c in at.caption)
    assert f"11 boxes for {len(full.nodes)} autograd nodes" in caption
    assert "2 layer(s) from the sidebar" in caption


def test_layers_come_from_the_sidebar_only() -> None:
    at = _run()
    assert not [s for s in at.slider if s.key == "graph_layers"], "one source of truth: no layers widget on the page"
    at.number_input(key="gx_num_layers").set_value(1).run()
    assert not at.exception and not at.error
    assert _dots(at) == _expected(ExplainConfig(seq_len=2, num_layers=1))
    at.number_input(key="gx_num_layers").set_value(4).run()
    assert not at.exception and not at.error and not at.info
    assert _dots(at) == _expected(ExplainConfig(seq_len=2, num_layers=4))


def test_widget_changes_redraw_the_graph() -> None:
    at = _run(ExplainConfig(cell="lstm", bidirectional=True, num_layers=1))
    at.slider(key="graph_steps").set_value(3).run()
    at.toggle(key="graph_params").set_value(True).run()
    at.toggle(key="graph_ops").set_value(True).run()
    assert not at.exception and not at.error
    cfg = ExplainConfig(cell="lstm", bidirectional=True, seq_len=3, num_layers=1)
    assert _dots(at) == _expected(cfg, show_parameters=True, every_op=True)
    assert "`y = cat(forward and reverse stacks of h_0..h_2)` is a *new* tensor" in at.markdown[0].value
    at.text_input(key="graph_target").input("c_n.sum() + y[:, 0].pow(2).mean()").run()
    assert not at.exception and not at.error
    assert _dots(at) == _expected(cfg.replace(target="c_n.sum() + y[:, 0].pow(2).mean()"), show_parameters=True,
                                  every_op=True)


def test_graph_options_round_trip_the_url() -> None:
    at = _run()
    assert not at.radio, "one layout (top to bottom): left to right was an unreadable strip"
    for key in ("graph.steps", "graph.ops", "graph.params"):
        assert key not in at.query_params, "defaults stay out of the URL"
    at.slider(key="graph_steps").set_value(3).run()
    at.toggle(key="graph_ops").set_value(True).run()
    assert at.query_params["graph.steps"] == "3" and at.query_params["graph.ops"] == "1"
    assert "graph.params" not in at.query_params
    fresh = _run(query={"graph.steps": "3", "graph.ops": "1"})  # a new session, same URL
    assert not fresh.exception and not fresh.warning
    assert _dots(fresh) == _dots(at)
    bad = _run(query={"graph.steps": "9", "graph.ops": "yes"})
    assert not bad.exception and len(bad.warning) == 2
    assert bad.slider(key="graph_steps").value == 2 and bad.toggle(key="graph_ops").value is False


def test_sidebar_cell_change_and_answer_gru() -> None:
    at = _run()
    at.selectbox(key="gx_cell").set_value("answer_gru").run()
    assert not at.exception and not at.error
    assert _dots(at) == _expected(ExplainConfig(cell="answer_gru", num_layers=1, seq_len=2))
    assert "`z ⊙ h_0 (mul)`" in " ".join(m.value for m in at.markdown)


def test_one_step_says_there_is_no_next_step() -> None:
    at = _run()
    at.slider(key="graph_steps").set_value(1).run()
    assert not at.exception and not at.error
    assert "no step t+1" in " ".join(m.value for m in at.markdown)


def test_shared_target_too_long_for_the_tiny_model_falls_back_with_a_notice() -> None:
    at = _run(ExplainConfig(target="y[:, 7].sum()"))
    assert not at.exception and not at.error
    assert at.info and "y[:, 7].sum()" in at.info[0].value
    assert at.text_input(key="graph_target").value == "y[:, -1].sum()"
    assert _dots(at) == _expected(ExplainConfig(seq_len=2))


def test_bad_target_shows_an_error_and_no_exception() -> None:
    at = _run()
    at.text_input(key="graph_target").input("y[:, 9].sum()").run()
    assert not at.exception
    assert at.error and "out of range" in at.error[0].value
    assert not at.get("graphviz_chart")
    at.text_input(key="graph_target").input("__import__('os').system('x')").run()
    assert not at.exception and at.error
    at.text_input(key="graph_target").input("h_n.sum()").run()
    assert not at.exception and not at.error
    [y_line] = [line for line in _dots(at)[0].splitlines() if 'label="y = ' in line]
    assert "dashed" in y_line  # y is drawn off the target's path
    assert "nothing (the target does not read y)" in " ".join(m.value for m in at.markdown)
