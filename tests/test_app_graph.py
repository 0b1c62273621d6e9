"""AppTest of the autograd-graph page: defaults, widget changes, the DOT equals the core's, errors shown."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

from gru_explainer import ExplainConfig
from gru_explainer.graph import backward_graph_dot

PAGE = str(Path(__file__).resolve().parents[1] / "app_pages" / "graph.py")


def _run(config: ExplainConfig | None = None) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=90)
    if config is not None:
        at.session_state["gx_config"] = config
    return at.run()


def _dot(at: AppTest) -> str:
    charts = at.get("graphviz_chart")
    assert len(charts) == 1
    return charts[0].proto.spec


def test_defaults_draw_the_core_graph() -> None:
    at = _run()
    assert not at.exception and not at.error
    expected = backward_graph_dot(ExplainConfig(seq_len=3, num_layers=2))
    assert _dot(at) == expected
    text = " ".join(m.value for m in at.markdown)
    assert "Into y" in text and "Into the next step" in text
    assert "`select`" in text  # y's one consumer, read from the graph


def test_widget_changes_redraw_the_graph() -> None:
    at = _run(ExplainConfig(cell="lstm", bidirectional=True))
    at.slider(key="graph_steps").set_value(2).run()
    at.slider(key="graph_layers").set_value(1).run()
    at.radio(key="graph_layout").set_value("LR").run()
    at.toggle(key="graph_params").set_value(False).run()
    assert not at.exception and not at.error
    cfg = ExplainConfig(cell="lstm", bidirectional=True, seq_len=2, num_layers=1)
    assert _dot(at) == backward_graph_dot(cfg, rankdir="LR", show_parameters=False)
    at.text_input(key="graph_target").input("c_n.sum() + y[:, 0].pow(2).mean()").run()
    assert not at.exception and not at.error
    assert _dot(at) == backward_graph_dot(cfg.replace(target="c_n.sum() + y[:, 0].pow(2).mean()"), rankdir="LR",
                                          show_parameters=False)


def test_sidebar_cell_change_and_answer_gru() -> None:
    at = _run()
    at.selectbox(key="gx_cell").set_value("answer_gru").run()
    assert not at.exception and not at.error
    cfg = ExplainConfig(cell="answer_gru", num_layers=1, seq_len=3)
    assert _dot(at) == backward_graph_dot(cfg)


def test_shared_target_too_long_for_the_tiny_model_falls_back_with_a_notice() -> None:
    at = _run(ExplainConfig(target="y[:, 7].sum()"))
    assert not at.exception and not at.error
    assert at.info and "y[:, 7].sum()" in at.info[0].value
    assert at.text_input(key="graph_target").value == "y[:, -1].sum()"
    assert _dot(at) == backward_graph_dot(ExplainConfig(seq_len=3))


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
    [y_line] = [line for line in _dot(at).splitlines() if 'label="y = ' in line]
    assert "dashed" in y_line  # y is drawn off the target's path
