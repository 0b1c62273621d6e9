"""The autograd graph as DOT: structure, the highlighted y and h_t nodes, the two gradient paths, escaping."""

from __future__ import annotations

import re
from collections import defaultdict

import pytest

from gru_explainer import ConfigError, ExplainConfig, TargetError
from gru_explainer.graph import (
    MAX_GRAPH_STEPS,
    backward_graph,
    backward_graph_dot,
    dot_quote,
    short_op,
)

TINY = ExplainConfig(cell="gru", num_layers=2, hidden_size=4, seq_len=4, batch_size=1, input_size=3)

_STRING = r'"(?:[^"\\]|\\.)*"'
_NODE = re.compile(rf"^\s*(\w+)\s*\[((?:[^\]\"]|{_STRING})*)\];\s*$")
_EDGE = re.compile(rf"^\s*(\w+)\s*->\s*(\w+)\s*(?:\[((?:[^\]\"]|{_STRING})*)\])?;\s*$")
_ATTR = re.compile(rf"(\w+)=({_STRING}|[\w.#]+)")


def _unquote(value: str) -> str:
    if not value.startswith('"'):
        return value
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), value[1:-1])


def parse_dot(dot: str) -> tuple[dict[str, dict[str, str]], list[tuple[str, str]]]:
    """A strict little parser for the DOT subset `to_dot` writes: balanced braces, nodes, edges, attributes."""
    depth = 0
    outside = re.sub(_STRING, '""', dot)  # braces inside labels do not count
    for char in outside:
        depth += {"{": 1, "}": -1}.get(char, 0)
        assert depth >= 0, "unbalanced braces"
    assert depth == 0, "unbalanced braces"
    lines = dot.strip().splitlines()
    assert lines[0] == "digraph backward {" and lines[-1] == "}"
    nodes: dict[str, dict[str, str]] = {}
    edges: list[tuple[str, str]] = []
    for line in lines[1:-1]:
        stripped = line.strip()
        if stripped.startswith(("graph [", "node [", "edge [", "subgraph ", "label=")) or stripped == "}":
            continue
        if m := _EDGE.match(line):
            edges.append((m.group(1), m.group(2)))
            continue
        m = _NODE.match(line)
        assert m, f"unparsable DOT line: {line!r}"
        assert m.group(1) not in nodes, f"node {m.group(1)} declared twice"
        nodes[m.group(1)] = {k: _unquote(v) for k, v in _ATTR.findall(m.group(2))}
    for src, dst in edges:
        assert src in nodes and dst in nodes, f"edge {src} -> {dst} refers to an undeclared node"
    return nodes, edges


def _reachable(edges: list[tuple[str, str]], start: str) -> set[str]:
    succ = defaultdict(list)
    for a, b in edges:
        succ[a].append(b)
    seen, stack = set(), [start]
    while stack:
        n = stack.pop()
        for m in succ[n]:
            if m not in seen:
                seen.add(m)
                stack.append(m)
    return seen


def _paths(edges: list[tuple[str, str]], src: str, dst: str) -> int:
    succ = defaultdict(list)
    for a, b in edges:
        succ[a].append(b)
    memo: dict[str, int] = {}

    def count(n: str) -> int:
        if n == dst:
            return 1
        if n not in memo:
            memo[n] = sum(count(m) for m in succ[n])
        return memo[n]

    return count(src)


def _h_nodes(nodes: dict[str, dict[str, str]]) -> dict[tuple[int, str, int], str]:
    found = {}
    for nid, attrs in nodes.items():
        m = re.match(r"h_(\d+) \(layer (\d+)(?:, (forward|reverse))?\)\n", attrs.get("label", ""))
        if m and not nid.startswith("legend_"):
            key = (int(m.group(2)), m.group(3) or "forward", int(m.group(1)))
            assert key not in found
            found[key] = nid
    return found


@pytest.mark.parametrize("cell", ["gru", "lstm", "rnn_tanh", "rnn_relu"])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("layers", [1, 2])
def test_dot_structure_and_two_gradient_paths(cell: str, bidirectional: bool, layers: int) -> None:
    cfg = TINY.replace(cell=cell, bidirectional=bidirectional, num_layers=layers)
    nodes, edges = parse_dot(backward_graph_dot(cfg))
    graph_nodes = {k: v for k, v in nodes.items() if not k.startswith("legend_")}
    y_nodes = [k for k, v in graph_nodes.items() if v["label"].startswith("y = ")]
    targets = [k for k, v in graph_nodes.items() if v["label"].startswith("target = ")]
    assert len(y_nodes) == 1 and len(targets) == 1
    y, target = y_nodes[0], targets[0]
    h = _h_nodes(graph_nodes)
    steps, dirs = cfg.seq_len, cfg.num_directions
    assert len(h) == steps * layers * dirs
    for (layer, direction, t), nid in h.items():
        assert y in _reachable(edges, nid), f"h_{t} layer {layer} {direction} does not reach y"
        nxt = t + 1 if direction == "forward" else t - 1
        if 0 <= nxt < steps:
            assert h[(layer, direction, nxt)] in _reachable(edges, nid), f"h_{t} does not reach h_{nxt}"
    # y is a sink except for the target: exactly one consumer path, and the target is the graph's only sink.
    assert _paths(edges, y, target) == 1
    assert not [b for a, b in edges if a == target]
    assert nodes[y]["fillcolor"] != nodes[h[(0, "forward", 0)]]["fillcolor"]


def test_structured_graph_matches_the_dot() -> None:
    graph = backward_graph(TINY)
    nodes, edges = parse_dot(graph.to_dot(legend=False))
    assert set(nodes) == set(graph.nodes)
    assert set(edges) == set(graph.edges)
    assert len(graph.edges) == len(set(graph.edges))
    assert graph.consumers(graph.y_id) and len(graph.consumers(graph.y_id)) == 1
    assert set(graph.hidden_ids) == {(layer, 0, t) for layer in range(2) for t in range(4)}
    for (layer, _, t), nid in graph.hidden_ids.items():
        consumers = graph.consumers(nid)
        assert graph.y_id in consumers or layer == 0  # the top layer's h_t feed y directly
        if t < 3:
            assert len(consumers) >= 2  # read by the stack AND by the next step
        assert graph.nodes[nid].t == t and graph.nodes[nid].layer == layer
    kinds = {n.kind for n in graph.nodes.values()}
    assert {"target", "y", "hidden", "layer_output", "input", "parameter", "op"} <= kinds


def test_lstm_cell_states_and_c_n_target() -> None:
    graph = backward_graph(TINY.replace(cell="lstm", target="c_n.sum() + y[:, 0].sum()"))
    assert len(graph.cell_ids) == 2 * 4
    assert any(n.kind == "final_state" for n in graph.nodes.values())


def test_head_and_answer_gru() -> None:
    graph = backward_graph(TINY.replace(head="linear", target="out[:, -1].sum()"))
    assert any(n.kind == "head" for n in graph.nodes.values())
    y_consumers = graph.consumers(graph.y_id)
    assert len(y_consumers) == 1
    answer = backward_graph(TINY.replace(cell="answer_gru", num_layers=1))
    assert len(answer.hidden_ids) == 4
    nodes, edges = parse_dot(answer.to_dot())
    assert _paths(edges, answer.y_id, answer.target_id) == 1


def test_y_not_read_by_target_is_drawn_off_path() -> None:
    graph = backward_graph(TINY.replace(target="h_n.sum()"))
    y = graph.nodes[graph.y_id]
    assert not y.on_target_path and graph.consumers(graph.y_id) == []
    nodes, _ = parse_dot(graph.to_dot())
    assert "dashed" in nodes[graph.y_id]["style"]
    assert all(graph.nodes[i].on_target_path for i in graph.hidden_ids.values())


def test_parameters_can_be_hidden() -> None:
    with_params = backward_graph(TINY)
    without = backward_graph(TINY, show_parameters=False)
    assert any(n.kind == "parameter" for n in with_params.nodes.values())
    assert not any(n.kind == "parameter" for n in without.nodes.values())
    parse_dot(without.to_dot(rankdir="LR"))
    # Parameters are compact: one node per parameter tensor, transposes folded in.
    params = [n.label for n in with_params.nodes.values() if n.kind == "parameter"]
    assert len(params) == len(set(params)) == 8
    assert not any(n.op == "TBackward0" for n in with_params.nodes.values())


def test_refuses_large_or_bad_configs() -> None:
    with pytest.raises(ConfigError, match="seq_len"):
        backward_graph_dot(TINY.replace(seq_len=MAX_GRAPH_STEPS + 1))
    with pytest.raises(ConfigError, match="num_layers"):
        backward_graph_dot(TINY.replace(num_layers=3))
    with pytest.raises(ConfigError):
        backward_graph_dot(TINY.replace(hidden_size=0))
    with pytest.raises(TargetError):
        backward_graph_dot(TINY.replace(target="y[:, 9].sum()"))
    with pytest.raises(TargetError):
        backward_graph_dot(TINY.replace(target="__import__('os')"))
    with pytest.raises(ValueError, match="rankdir"):
        backward_graph(TINY).to_dot(rankdir="XX")


def test_labels_are_escaped() -> None:
    assert dot_quote('a "b" \\ c\nd') == '"a \\"b\\" \\\\ c\\nd"'
    assert _unquote(dot_quote('x"}{\\n')) == 'x"}{\\n'
    # The target text appears in labels; braces and brackets inside it must not break the structure.
    nodes, _ = parse_dot(backward_graph_dot(TINY.replace(target="(y[:, -1] * 2).sum() / 3")))
    assert any(v.get("label", "").startswith("target = (y[:, -1] * 2).sum() / 3") for v in nodes.values())


def test_short_op() -> None:
    assert short_op("AddmmBackward0") == "addmm"
    assert short_op("AccumulateGrad") == "leaf"
    assert short_op("Weird") == "weird"
