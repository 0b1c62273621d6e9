"""The autograd graph as DOT: structure, the highlighted y and h_t nodes, the two gradient paths, escaping."""

from __future__ import annotations

import re
from collections import defaultdict

import pytest

from gru_explainer import ConfigError, ExplainConfig, TargetError
from gru_explainer.graph import (
    LEGEND_WIDTH,
    MAX_GRAPH_LAYERS,
    MAX_GRAPH_STEPS,
    ROLE_LABELS,
    BackwardGraph,
    backward_graph,
    backward_graph_dot,
    dot_quote,
    graph_facts,
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
    assert lines[0] in ("digraph backward {", "digraph legend {") and lines[-1] == "}"
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
        backward_graph_dot(TINY.replace(num_layers=MAX_GRAPH_LAYERS + 1))
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


CELL_CONFIGS = [TINY.replace(cell=cell, num_layers=layers, bidirectional=bidi, seq_len=3)
                for cell in ("gru", "lstm", "rnn_tanh", "rnn_relu") for layers in (1, 2) for bidi in (False, True)]
CELL_CONFIGS.append(TINY.replace(cell="answer_gru", num_layers=1, seq_len=3))
STEP_ROLES = {
    "gru": {"gi", "gh", "split_i", "split_h", "pre_r", "pre_z", "r", "z", "r_hn", "pre_n", "n", "one_minus_z", "cand",
            "keep"},
    "lstm": {"gi", "gh", "pre_all", "split_g", "i", "f", "g", "o", "f_c", "i_g", "tanh_c"},
    "rnn_tanh": {"gi", "gh", "pre_all"},
    "rnn_relu": {"gi", "gh", "pre_all"},
    "answer_gru": {"x_t", "lin_r", "lin_z", "lin_in", "lin_hn", "r", "z", "answer_r_hn", "answer_pre_n", "n",
                   "one_minus_z", "cand", "keep"},
}
"""The ops every step of a cell computes (the first step of the answer GRU cats x_t with nothing: no cat node)."""
ROLE_OPS = {"gi": "select", "x_t": "select", "gh": "addmm", "lin_r": "addmm", "lin_z": "addmm", "lin_in": "addmm",
            "lin_hn": "addmm", "gi_all": "addmm", "split_i": "split", "split_h": "split", "split_g": "split",
            "pre_r": "add", "pre_z": "add", "pre_n": "add", "answer_pre_n": "add", "pre_all": "add", "r": "sigmoid",
            "z": "sigmoid", "i": "sigmoid", "f": "sigmoid", "o": "sigmoid", "n": "tanh", "g": "tanh", "tanh_c": "tanh",
            "one_minus_z": "rsub", "r_hn": "mul", "answer_r_hn": "mul", "cand": "mul", "keep": "mul", "f_c": "mul",
            "i_g": "mul", "cat_xh": "cat", "reshape": "view"}
"""The autograd op behind each role: a label never names a computation its node does not do."""


def _by_step(graph: BackwardGraph) -> dict[tuple[int, int, int], dict[str, list[str]]]:
    steps: dict[tuple[int, int, int], dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for node in graph.nodes.values():
        if node.kind == "op" and node.step is not None:
            steps[node.step][node.role].append(node.id)
    return steps


@pytest.mark.parametrize("cfg", CELL_CONFIGS, ids=lambda c: f"{c.cell}-{c.num_layers}l-{c.num_directions}d")
def test_every_cell_op_is_labelled_with_what_it_computes(cfg: ExplainConfig) -> None:
    graph = backward_graph(cfg)
    steps = _by_step(graph)
    assert set(steps) == set(graph.hidden_ids), "every step's ops are found, and only steps have them"
    for step, roles in steps.items():
        assert None not in roles, f"step {step}: ops without a role: {[graph.nodes[i].op for i in roles[None]]}"
        assert STEP_ROLES[cfg.cell] <= set(roles), f"step {step} lacks {STEP_ROLES[cfg.cell] - set(roles)}"
        for role, ids in roles.items():
            for nid in ids:
                node = graph.nodes[nid]
                assert short_op(node.op) == ROLE_OPS[role], f"{role} drawn on a {node.op}"
                assert node.label.split("\n")[-1] == f"({short_op(node.op)})", "the op's name is on the last line"
                assert not re.fullmatch(r"[a-z_]+", node.label.split("\n")[0]), f"raw op name {node.label!r}"
    for node in graph.nodes.values():  # outside the steps: the input projections and their reshapes
        if node.kind == "op" and node.step is None and node.role is not None:
            assert node.role in ("gi_all", "reshape", "cat_dirs")
            assert short_op(node.op) == ROLE_OPS.get(node.role, "cat")


def _role_node(graph: BackwardGraph, step: tuple[int, int, int], role: str) -> str:
    [nid] = _by_step(graph)[step][role]
    return nid


@pytest.mark.parametrize("cell", ["gru", "answer_gru"])
def test_gru_labels_match_the_equations(cell: str) -> None:
    """h_t = (1 - z) * n + z * h_{t-1}: the nodes labelled so are wired so, step by step and in both directions."""
    cfg = TINY.replace(cell=cell, num_layers=1, seq_len=3, bidirectional=cell == "gru")
    graph = backward_graph(cfg)
    for (layer, d, t), h in graph.hidden_ids.items():
        step = (layer, d, t)
        z, n, keep, cand = (_role_node(graph, step, r) for r in ("z", "n", "keep", "cand"))
        one_minus_z = _role_node(graph, step, "one_minus_z")
        assert set(graph.producers(h)) == {cand, keep}
        assert set(graph.producers(cand)) == {one_minus_z, n}
        assert set(graph.producers(one_minus_z)) == {z}
        assert set(graph.consumers(z)) == {one_minus_z, keep}
        prev = t - 1 if d == 0 else t + 1
        if 0 <= prev < cfg.seq_len:
            assert graph.hidden_ids[(layer, d, prev)] in graph.producers(keep), "z ⊙ h_{t-1} reads h_{t-1}"
            assert f"z ⊙ h_{prev}" in graph.nodes[keep].label
        else:
            assert graph.producers(keep) == [z] and "h_init" in graph.nodes[keep].label  # zeros: no graph node
        r = _role_node(graph, step, "r")
        r_hn = _role_node(graph, step, "r_hn" if cell == "gru" else "answer_r_hn")
        assert r in graph.producers(r_hn) and set(graph.consumers(r)) == {r_hn}
        assert graph.nodes[h].label.startswith(f"h_{t} (")


def test_lstm_labels_match_the_equations() -> None:
    """c_t = f * c_{t-1} + i * g and h_t = o * tanh(c_t), with i, f, g, o the split's outputs 0, 1, 2, 3."""
    cfg = TINY.replace(cell="lstm", num_layers=1, seq_len=3)
    graph = backward_graph(cfg)
    for (layer, d, t), h in graph.hidden_ids.items():
        step, c = (layer, d, t), graph.cell_ids[(layer, d, t)]
        roles = {r: _role_node(graph, step, r) for r in STEP_ROLES["lstm"]}
        assert set(graph.producers(c)) == {roles["f_c"], roles["i_g"]}
        assert set(graph.producers(roles["i_g"])) == {roles["i"], roles["g"]}
        assert set(graph.producers(h)) == {roles["o"], roles["tanh_c"]}
        assert graph.producers(roles["tanh_c"]) == [c]
        for gate in "ifgo":
            assert graph.producers(roles[gate]) == [roles["split_g"]]
        if t > 0:
            assert graph.cell_ids[(layer, d, t - 1)] in graph.producers(roles["f_c"])


def _reach(graph: BackwardGraph, start: str) -> set[str]:
    return _reachable(graph.edges, start)


@pytest.mark.parametrize("cfg", CELL_CONFIGS, ids=lambda c: f"{c.cell}-{c.num_layers}l-{c.num_directions}d")
def test_collapsed_graph_keeps_both_paths_and_counts_every_node(cfg: ExplainConfig) -> None:
    full = backward_graph(cfg, show_parameters=False)
    small = full.collapsed()
    assert small.collapsed() is small
    assert not [n for n in small.nodes.values() if n.kind == "op" and n.step is not None]
    reshapes = sum(1 for n in full.nodes.values() if n.role == "reshape")
    assert sum(n.ops for n in small.nodes.values()) + reshapes == len(full.nodes)
    assert all(n.role != "reshape" for n in small.nodes.values())
    kept = [i for i in small.nodes if i in full.nodes and full.nodes[i].kind != "op"]
    for a in kept:  # the same reachability between states, stacks, x and the target
        assert _reach(small, a) & set(kept) == _reach(full, a) & set(kept), f"{a}: paths changed"
    owner = dict(small.hidden_ids)
    owner.update(small.cell_ids)
    for (layer, d, t), h in small.hidden_ids.items():
        nxt = t + 1 if d == 0 else t - 1
        if 0 <= nxt < cfg.seq_len:  # path 2 is one edge: h_t -> the (first) state of step t+1
            assert (h, owner[(layer, d, nxt)]) in small.edges
        stacks = [c for c in small.consumers(h) if small.nodes[c].kind in ("y", "layer_output")]
        assert len(stacks) == 1, "path 1: h_t is read by its layer's stack"
    nodes, edges = parse_dot(small.to_dot(legend=False))
    assert set(edges) == set(small.edges) and set(nodes) == set(small.nodes)
    parse_dot(small.legend_dot())


def test_collapsed_labels_and_edge_colours() -> None:
    small = backward_graph(TINY.replace(seq_len=2), show_parameters=False).collapsed()
    h0, h1 = small.hidden_ids[(1, 0, 0)], small.hidden_ids[(1, 0, 1)]
    assert small.nodes[h1].label == "h_1 (layer 1)\n= (1 − z) ⊙ n + z ⊙ h_0\n+ 14 ops: gates r, z, n"
    assert small.nodes[h1].ops == 15
    nodes, _ = parse_dot(small.to_dot())
    edge_lines = {(m.group(1), m.group(2)): m.group(3) or "" for m in map(_EDGE.match, small.to_dot().splitlines())
                  if m}
    assert "#4c78a8" in edge_lines[(h0, h1)], "path 2 (into the next step) is blue"
    assert "#e45756" in edge_lines[(h0, small.y_id)], "path 1 (into the stack) is red"
    facts = graph_facts(small)
    assert facts["y_consumers"] == ["y[:, -1] (select)"]
    assert facts["h0_consumers"] == ["y = stack(h_0..h_1) (stack)", "h_1 (layer 1)"]
    full_facts = graph_facts(backward_graph(TINY.replace(seq_len=2), show_parameters=False))
    assert sorted(full_facts["h0_consumers"]) == sorted(["y = stack(h_0..h_1) (stack)", "z ⊙ h_0 (mul)",
                                                         "W_hh h_0 + b_hh (addmm)"])


def test_legend_entries_share_one_width() -> None:
    graph = backward_graph(TINY.replace(cell="lstm", head="linear", target="out.sum() + c_n.sum()"))
    for dot in (graph.legend_dot(), graph.to_dot()):
        nodes, _ = parse_dot(dot)
        legend = {k: v for k, v in nodes.items() if k.startswith("legend_")}
        boxes = {k: v for k, v in legend.items() if v.get("shape") != "plaintext"}
        assert {v["width"] for v in boxes.values()} == {LEGEND_WIDTH}
        assert {k.removeprefix("legend_") for k in boxes} == set(graph.kinds())
        assert {"legend_path1", "legend_path2"} <= set(legend)


def test_role_labels_fill_every_placeholder() -> None:
    from gru_explainer.graph import _fill

    for text in ROLE_LABELS.values():
        filled = _fill(text, TINY, 1, 1, 0)
        assert "{" not in filled and "}" not in filled


def test_cells_are_named_with_the_one_label_map() -> None:
    from gru_explainer.config import CELL_LABELS

    for cell in ("gru", "lstm", "rnn_tanh", "rnn_relu", "answer_gru"):
        graph = backward_graph(TINY.replace(cell=cell, num_layers=1, seq_len=2))
        assert f"\n{CELL_LABELS[cell]}, 1 layer(s)" in _unquote(re.search(r"label=(" + _STRING + ")", graph.to_dot(
            ).splitlines()[1]).group(1))
        assert f"{CELL_LABELS[cell]} step t = 1 (layer 0)" in graph.to_dot()
