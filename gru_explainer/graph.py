"""The autograd graph of a tiny unrolled model, as a DOT string: where the two gradient paths of h_t go.

`backward_graph(cfg)` builds the unrolled twin (every h_t a graph node), evaluates the target, and walks
``grad_fn`` / ``next_functions`` from the target's ``grad_fn`` (and from y's, so y is shown even when the target
does not read it). `BackwardGraph.to_dot()` renders it; Streamlit's ``st.graphviz_chart`` draws DOT in the
browser, so neither the graphviz binary nor the Python package is needed.

Edges point in the FORWARD direction (producer -> consumer, like torchviz); gradients flow against them. The
highlighted nodes show the puzzle: the node that produced y (the stack of the top layer's states) is read only
by the target, while each h_t is read by that stack AND by the next step of the recurrence. So dL/dh_t collects
gradient through the recurrence, but y.grad (∂L/∂y) only through y's own single consumer path.

Every op inside a cell step is labelled with what it computes (``z = σ(…) update gate``, ``1 − z``,
``z ⊙ h_0``), read from the op and the roles of its inputs (which chunk of a split, which parameter), and tagged
with its step; `BackwardGraph.collapsed()` folds each step's ops into its state node, so the graph fits one screen.

Only tiny models are drawn: seq_len <= MAX_GRAPH_STEPS and num_layers <= MAX_GRAPH_LAYERS (ConfigError
otherwise). The graph's structure does not depend on hidden/batch/input size or device; it is built on the CPU.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor

from .config import CELL_LABELS, ExplainConfig, Limits
from .errors import ConfigError
from .explain import compile_target
from .models import SeedAnswerGRU, UnrolledTwin, build
from .report import DIRECTIONS

MAX_GRAPH_STEPS = 4
MAX_GRAPH_LAYERS = 4
"""The hosted layer limit, so the graph page can always draw the sidebar's layers (one source of truth)."""

KINDS = ("target", "y", "hidden", "cell", "layer_output", "final_state", "head", "op", "input", "parameter")
"""Node kinds, in legend order: the target, y, h_t, c_t, a lower layer's stacked output, h_n / c_n, the head's
output, any other op, the input x and the parameters (AccumulateGrad leaves)."""

STYLES: dict[str, dict[str, str]] = {
    "target": {"shape": "box", "style": "filled,bold", "fillcolor": "#f2cf5b", "color": "#7a5c00",
               "fontcolor": "#1f1f1f"},
    "y": {"shape": "box", "style": "filled,bold", "fillcolor": "#e45756", "color": "#8c1c1b",
          "fontcolor": "#ffffff", "penwidth": "2"},
    "hidden": {"shape": "box", "style": "filled,rounded", "fillcolor": "#4c78a8", "color": "#1f3f66",
               "fontcolor": "#ffffff"},
    "cell": {"shape": "box", "style": "filled,rounded", "fillcolor": "#72b7b2", "color": "#2f6b67",
             "fontcolor": "#1f1f1f"},
    "layer_output": {"shape": "box", "style": "filled", "fillcolor": "#d8d2cc", "color": "#6e6661",
                     "fontcolor": "#1f1f1f"},
    "final_state": {"shape": "box", "style": "filled", "fillcolor": "#f58518", "color": "#8a4600",
                    "fontcolor": "#1f1f1f"},
    "head": {"shape": "box", "style": "filled", "fillcolor": "#b279a2", "color": "#5e3353",
             "fontcolor": "#ffffff"},
    "op": {"shape": "box", "style": "filled,rounded", "fillcolor": "#ffffff", "color": "#9a9a9a",
           "fontcolor": "#333333", "fontsize": "9"},
    "input": {"shape": "box", "style": "filled", "fillcolor": "#eeeeee", "color": "#555555",
              "fontcolor": "#1f1f1f"},
    "parameter": {"shape": "box", "style": "filled,dashed", "fillcolor": "#f4f4f4", "color": "#bbbbbb",
                  "fontcolor": "#555555", "fontsize": "9"},
}
LEGEND: dict[str, str] = {
    "target": "the target (scalar)",
    "y": "y: the stacked output (read only by the target)",
    "hidden": "h_t: the hidden state the recurrence uses",
    "cell": "c_t: the LSTM cell state",
    "layer_output": "a lower layer's stacked output (read by the layer above)",
    "final_state": "h_n / c_n: the stacked final states",
    "head": "the linear head's output",
    "op": "an autograd op, labelled with what it computes",
    "input": "the input x",
    "parameter": "a parameter (AccumulateGrad leaf)",
}
PATH_LEGEND = {
    "path1": ("#b8332f", "red arrow: h_t read by a stack (y, a layer's output): path 1"),
    "path2": ("#2f5b8a", "blue arrow: h_t or c_t read by the next step: path 2"),
}
"""The two edge colours of `to_dot`, explained in the legend (as text, so they are not told apart by colour only)."""
LEGEND_WIDTH = "3.6"
"""Legend entries share one width (inches) with room to spare: the browser's font can be wider than the one
Graphviz measured, and text must stay inside its box."""

# What each op of a cell step computes, by role (see `_role`); {t} is the step, {p} the previous state's symbol.
ROLE_LABELS: dict[str, str] = {
    "gi_all": "W_ih · {inp} + b_ih,\nevery step at once",
    "reshape": "reshape",
    "gi": "step {t}: W_ih {xt} + b_ih",
    "gh": "W_hh {p} + b_hh",
    "split_i": "split into i_r, i_z, i_n",
    "split_h": "split into h_r, h_z, h_n",
    "split_g": "split into i, f, g, o",
    "pre_r": "i_r + h_r",
    "pre_z": "i_z + h_z",
    "r": "r = σ(…) reset gate",
    "z": "z = σ(…) update gate",
    "r_hn": "r ⊙ h_n",
    "pre_n": "i_n + r ⊙ h_n",
    "n": "n = tanh(i_n + r ⊙ h_n)",
    "one_minus_z": "1 − z",
    "cand": "(1 − z) ⊙ n",
    "keep": "z ⊙ {p}",
    "pre_all": "W_ih {xt} + b_ih\n+ W_hh {p} + b_hh",
    "i": "i = σ(…) input gate",
    "f": "f = σ(…) forget gate",
    "g": "g = tanh(…) candidate",
    "o": "o = σ(…) output gate",
    "f_c": "f ⊙ {pc}",
    "i_g": "i ⊙ g",
    "tanh_c": "tanh(c_{t})",
    "x_t": "x_{t} = x[:, {t}]",
    "cat_xh": "[x_{t}, {p}]",
    "lin_r": "W_r [x_{t}, {p}] + b_r",
    "lin_z": "W_z [x_{t}, {p}] + b_z",
    "lin_in": "W_in x_{t} + b_in",
    "lin_hn": "W_hn {p} + b_hn",
    "answer_r_hn": "r ⊙ (W_hn {p} + b_hn)",
    "answer_pre_n": "W_in x_{t} + b_in\n+ r ⊙ (W_hn {p} + b_hn)",
    "head_fc": "W_fc y[:, -1] + b_fc",
    "cat_dirs": "cat(forward, reverse)",
}
STATE_EQUATIONS = {
    ("gru", "h"): "= (1 − z) ⊙ n + z ⊙ {p}",
    ("answer_gru", "h"): "= (1 − z) ⊙ n + z ⊙ {p}",
    ("lstm", "h"): "= o ⊙ tanh(c_{t})",
    ("lstm", "c"): "= f ⊙ {pc} + i ⊙ g",
    ("rnn_tanh", "h"): "= tanh(W_ih {xt} + W_hh {p} + b)",
    ("rnn_relu", "h"): "= relu(W_ih {xt} + W_hh {p} + b)",
}
"""The equation under each state node's name, per cell and state."""
STEP_SUMMARIES = {
    "gru": "gates r, z, n",
    "answer_gru": "gates r, z, n",
    "lstm": "gates i, f, g, o",
    "rnn_tanh": "",
    "rnn_relu": "",
}
"""The collapsed step node's summary line, per cell."""


@dataclass
class GraphNode:
    """One autograd node: its DOT id, the grad_fn class name, a display label, a kind (see KINDS), for states
    the layer / direction / step it computes, and the cell step (layer, direction index, t) it belongs to."""

    id: str
    op: str
    label: str
    kind: str = "op"
    layer: int | None = None
    direction: str | None = None
    t: int | None = None
    on_target_path: bool = True
    step: tuple[int, int, int] | None = None
    role: str | None = None
    ops: int = 1


@dataclass
class BackwardGraph:
    """The walked graph: nodes by id, forward-direction edges (producer, consumer), and the special node ids."""

    config: ExplainConfig
    nodes: dict[str, GraphNode]
    edges: list[tuple[str, str]]
    target_id: str
    y_id: str
    hidden_ids: dict[tuple[int, int, int], str] = field(default_factory=dict)  # (layer, direction, t) -> id
    cell_ids: dict[tuple[int, int, int], str] = field(default_factory=dict)
    collapsed_steps: bool = False

    def consumers(self, node_id: str) -> list[str]:
        """Ids of the nodes that read `node_id`'s result."""
        return [dst for src, dst in self.edges if src == node_id]

    def producers(self, node_id: str) -> list[str]:
        """Ids of the nodes whose results `node_id` reads."""
        return [src for src, dst in self.edges if dst == node_id]

    def collapsed(self) -> BackwardGraph:
        """This graph with each cell step's gate ops folded into that step's state node (c_t for an LSTM, else
        h_t) and reshapes left out, so both paths out of every h_t are direct edges: h_t -> the stack (y) and
        h_t -> the state of step t+1. A folded node's `ops` counts the autograd nodes it stands for."""
        if self.collapsed_steps:
            return self
        owner: dict[tuple[int, int, int], str] = dict(self.hidden_ids)
        owner.update(self.cell_ids)  # an LSTM step's gates feed c_t first; h_t = o * tanh(c_t) reads c_t
        members: dict[str, list[GraphNode]] = {}
        where: dict[str, str] = {}
        for node in self.nodes.values():
            if node.kind == "op" and node.step in owner:
                where[node.id] = owner[node.step]
                members.setdefault(owner[node.step], []).append(node)
            elif not (node.kind == "op" and node.role == "reshape"):
                where[node.id] = node.id
        nodes: dict[str, GraphNode] = {}
        for node in self.nodes.values():
            if where.get(node.id) != node.id:
                continue
            folded = members.get(node.id, [])
            if folded:
                layer, d, t = node.step
                summary = _fill(STEP_SUMMARIES.get(self.config.cell, ""), self.config, layer, d, t)
                node = replace(node, label=f"{node.label}\n+ {len(folded)} ops" + (f": {summary}" if summary else ""),
                               ops=node.ops + sum(m.ops for m in folded),
                               on_target_path=node.on_target_path or any(m.on_target_path for m in folded))
            elif node.kind == "op":  # the op's name on the last line of text: a shorter graph
                node = replace(node, label=" ".join(node.label.rsplit("\n", 1)))
            nodes[node.id] = node
        succ: dict[str, list[str]] = {}
        for src, dst in self.edges:
            succ.setdefault(src, []).append(dst)

        def ends(node_id: str) -> list[str]:
            """Where an edge into `node_id` lands once reshapes are left out (their consumers, transitively)."""
            if node_id in where:
                return [where[node_id]]
            return [end for nxt in succ.get(node_id, []) for end in ends(nxt)]

        edges: list[tuple[str, str]] = []
        for src, dst in self.edges:
            if src not in where:
                continue
            for end in ends(dst):
                edge = (where[src], end)
                if edge[0] != edge[1] and edge not in edges:
                    edges.append(edge)
        return BackwardGraph(config=self.config, nodes=nodes, edges=edges, target_id=self.target_id,
                             y_id=self.y_id, hidden_ids=dict(self.hidden_ids), cell_ids=dict(self.cell_ids),
                             collapsed_steps=True)

    def to_dot(self, rankdir: str = "TB", legend: bool = True) -> str:
        """The graph as a DOT string (white background, so it reads in light and dark themes); each cell step's
        nodes sit in a dashed box named after the step."""
        if rankdir not in ("TB", "LR", "BT", "RL"):
            raise ValueError(f"rankdir must be TB, LR, BT or RL; got {rankdir!r}")
        lines = [
            "digraph backward {",
            f"  graph [rankdir={rankdir}, bgcolor=\"white\", fontname=\"Helvetica\", fontsize=11, nodesep=0.2, "
            "ranksep=0.3, labelloc=t, label=" + dot_quote(_title(self.config)) + "];",
            "  node [fontname=\"Helvetica\", fontsize=10, height=0.3, margin=\"0.12,0.04\"];",
            "  edge [color=\"#888888\", arrowsize=0.5];",
        ]
        clusters: dict[tuple[int, int, int], list[GraphNode]] = {}
        for node in self.nodes.values():
            if node.step is not None and not self.collapsed_steps:
                clusters.setdefault(node.step, []).append(node)
        for step, members in clusters.items():
            layer, d, t = step
            lines.append("  subgraph cluster_step_{}_{}_{} {{".format(*step))
            lines.append(f"    label={dot_quote(_step_name(self.config, layer, d, t))}; style=\"rounded,dashed\"; "
                         "color=\"#9db4cf\"; fontsize=9; fontcolor=\"#1f3f66\";")
            lines.extend("  " + self._node_line(node) for node in members)
            lines.append("  }")
        for node in self.nodes.values():
            if node.step is None or self.collapsed_steps:
                lines.append(self._node_line(node))
        stacks = {"y", "target", "layer_output", "final_state", "head"}
        for src, dst in self.edges:
            kinds = (self.nodes[src].kind, self.nodes[dst].kind)
            if kinds[0] == "parameter":
                attrs = {"color": "#cccccc", "style": "dashed", "arrowsize": "0.3"}
            elif kinds[0] == "y" or (kinds[0] == "hidden" and kinds[1] in stacks):  # path 1: into the stacks
                attrs = {"color": "#e45756", "penwidth": "1.6"}
            elif kinds[0] in ("hidden", "cell"):
                attrs = {"color": "#4c78a8", "penwidth": "1.4"}
            else:
                attrs = {}
            lines.append(f"  {src} -> {dst}" + (f" [{_attrs(attrs)}]" if attrs else "") + ";")
        if legend:
            lines.append("  subgraph cluster_legend {")
            lines.append("    label=\"Legend\"; style=\"rounded\"; color=\"#bbbbbb\"; fontsize=10; margin=12;")
            lines.extend("  " + line for line in _legend_lines(self.kinds()))
            lines.append("  }")
        lines.append("}")
        return "\n".join(lines) + "\n"

    def kinds(self) -> list[str]:
        """The node kinds this graph uses, in legend order (KINDS)."""
        return [k for k in KINDS if any(n.kind == k for n in self.nodes.values())]

    def legend_dot(self) -> str:
        """The legend alone, as a DOT string of the kinds this graph uses (to draw beside or under the graph)."""
        lines = ["digraph legend {",
                 "  graph [bgcolor=\"white\", fontname=\"Helvetica\", nodesep=0.1, ranksep=0.12, margin=0.05];",
                 "  node [fontname=\"Helvetica\", fontsize=10, height=0.3, margin=\"0.12,0.04\"];",
                 *_legend_lines(self.kinds()), "}"]
        return "\n".join(lines) + "\n"

    def _node_line(self, node: GraphNode) -> str:
        attrs = dict(STYLES[node.kind])
        if not node.on_target_path:
            attrs["style"] = attrs["style"] + ",dashed"
        attrs["label"] = node.label
        attrs["tooltip"] = f"{node.op}" + ("" if node.on_target_path else " (not on the target's graph)")
        return f"  {node.id} [{_attrs(attrs)}];"


def _legend_lines(kinds: list[str]) -> list[str]:
    """One node per kind, all LEGEND_WIDTH wide, stacked by invisible edges."""
    lines = []
    for kind in kinds:
        attrs = dict(STYLES[kind])
        attrs.update(label=LEGEND[kind], width=LEGEND_WIDTH, fontsize="10")
        lines.append(f"  legend_{kind} [{_attrs(attrs)}];")
    for name, (color, text) in PATH_LEGEND.items():
        lines.append(f"  legend_{name} [{_attrs(dict(shape='plaintext', fontcolor=color, label=text))}];")
    names = [*kinds, *PATH_LEGEND]
    lines.extend(f"  legend_{a} -> legend_{b} [style=invis];" for a, b in zip(names, names[1:], strict=False))
    return lines


def graph_facts(graph: BackwardGraph) -> dict[str, Any]:
    """What the page says about a graph, read from it: sizes, y's consumers, the top layer's h_0's consumers."""
    top = graph.config.num_layers - 1
    h0 = graph.hidden_ids.get((top, 0, 0))

    def name(node_id: str) -> str:
        node = graph.nodes[node_id]
        if node.kind == "op":  # its label already ends with the op's name
            return node.label.replace("\n", " ")
        first = node.label.split("\n")[0]
        return first if node.ops > 1 else f"{first} ({short_op(node.op)})"

    return {
        "nodes": len(graph.nodes),
        "edges": len(graph.edges),
        "autograd_nodes": sum(n.ops for n in graph.nodes.values()),
        "y_consumers": [name(c) for c in graph.consumers(graph.y_id)],
        "y_label": graph.nodes[graph.y_id].label.split("\n")[0],
        "y_on_path": graph.nodes[graph.y_id].on_target_path,
        "h0_consumers": [name(c) for c in graph.consumers(h0)] if h0 else [],
        "states": len(graph.hidden_ids) + len(graph.cell_ids),
    }


def dot_quote(text: str) -> str:
    """`text` as a DOT double-quoted string: backslashes and quotes escaped, newlines as centred line breaks."""
    escaped = str(text).replace("\\", "\\\\").replace('"', '\\"')
    escaped = escaped.replace("\r\n", "\n").replace("\r", "\n").replace("\n", "\\n")
    return f'"{escaped}"'


def _attrs(attrs: dict[str, str]) -> str:
    return ", ".join(f"{k}={dot_quote(v)}" for k, v in attrs.items())


def _title(cfg: ExplainConfig) -> str:
    dirs = ", bidirectional" if cfg.bidirectional else ""
    return (f"target = {cfg.target}\n{CELL_LABELS.get(cfg.cell, cfg.cell)}, {cfg.num_layers} layer(s){dirs}, "
            f"T = {cfg.seq_len}; arrows: forward data flow")


def _prev(symbol: str, d: int, t: int, steps: int) -> str:
    """The previous state's symbol at step t of direction d ("h_init" before the first step: zeros)."""
    prev = t - 1 if d == 0 else t + 1
    return f"{symbol}_{prev}" if 0 <= prev < steps else f"{symbol}_init"


def _fill(text: str, cfg: ExplainConfig, layer: int, d: int, t: int) -> str:
    """A role label with the step filled in: {t} the step, {p} / {pc} the previous h / c, {inp} the layer's input
    and {xt} its step t."""
    inp = "x" if layer == 0 else f"(layer {layer - 1} output)"
    xt = f"x_{t}" if layer == 0 else f"(layer {layer - 1} output)_{t}"
    return text.format(t=t, p=_prev("h", d, t, cfg.seq_len), pc=_prev("c", d, t, cfg.seq_len), inp=inp, xt=xt)


def _where(cfg: ExplainConfig, layer: int, d: int) -> str:
    return f"layer {layer}" if cfg.num_directions == 1 else f"layer {layer}, {DIRECTIONS[d]}"


def _step_name(cfg: ExplainConfig, layer: int, d: int, t: int) -> str:
    return f"{CELL_LABELS.get(cfg.cell, cfg.cell)} step t = {t} ({_where(cfg, layer, d)})"


def short_op(name: str) -> str:
    """'AddmmBackward0' -> 'addmm', 'AccumulateGrad' -> 'leaf'."""
    if name == "AccumulateGrad":
        return "leaf"
    stem = re.sub(r"Backward\d*$", "", name)
    return stem.lower() or name


def _steps_text(steps: int) -> str:
    return "h_0" if steps == 1 else f"h_0..h_{steps - 1}"


def check_tiny(cfg: ExplainConfig) -> None:
    """ConfigError unless cfg is small enough to draw (seq_len <= MAX_GRAPH_STEPS, num_layers <= MAX_GRAPH_LAYERS)
    and otherwise valid."""
    cfg.validate(Limits.from_env())
    if cfg.seq_len > MAX_GRAPH_STEPS:
        raise ConfigError(f"the graph is drawn only for seq_len <= {MAX_GRAPH_STEPS} (got {cfg.seq_len}); "
                          "the graph grows by one copy of the cell per step")
    if cfg.num_layers > MAX_GRAPH_LAYERS:
        raise ConfigError(f"the graph is drawn only for num_layers <= {MAX_GRAPH_LAYERS} (got {cfg.num_layers})")


def backward_graph(cfg: ExplainConfig, show_parameters: bool = True) -> BackwardGraph:
    """Build the twin for a tiny config, evaluate its target and walk the autograd graph (see module doc)."""
    check_tiny(cfg)
    target = compile_target(cfg)
    built = build(cfg.replace(device="cpu"), torch.device("cpu"))
    x = built.inputs.detach().requires_grad_()
    names = {id(p): n for n, p in built.module.named_parameters()}
    if built.head is not None:
        names.update({id(p): f"head.{n}" for n, p in built.head.named_parameters()})
    names[id(x)] = "x"
    steps, num_dirs = cfg.seq_len, cfg.num_directions
    special: dict[int, tuple[str, str, dict]] = {}  # id(grad_fn) -> (kind, label, extra)
    keep_alive: list = []  # the grad_fn wrappers whose id() keys `special` must stay alive (ids stay unique)

    def mark(fn, kind: str, label: str, **extra: int) -> None:
        if fn is not None:
            keep_alive.append(fn)
            special[id(fn)] = (kind, label, extra)

    with torch.enable_grad():
        if isinstance(built.module, SeedAnswerGRU):
            y, hs = built.module(x)
            hidden, cells, h_n, c_n = [[hs]], None, hs[-1].unsqueeze(0), None
            h_n_label = f"h_n = h_{steps - 1}.unsqueeze(0)"
        else:
            twin = UnrolledTwin(built.module)(x)
            y, hidden, cells, h_n, c_n = twin.y, twin.hidden, twin.cell, twin.h_n, twin.c_n
            h_n_label = "h_n = stack(final h of each layer/direction)"
        named: dict[str, Tensor] = {"y": y, "h_n": h_n}
        if c_n is not None:
            named["c_n"] = c_n
        head_out = None
        if built.head is not None:
            head_out = built.head(y)
            named["out"] = head_out
        value = target.evaluate(named)
    for layer, per_layer in enumerate(hidden):
        for d, per_dir in enumerate(per_layer):
            for t, h in enumerate(per_dir):
                mark(h.grad_fn, "hidden", _state_label("h", t, layer, d, cfg), layer=layer, d=d, t=t)
    for layer, per_layer in enumerate(cells or []):
        for d, per_dir in enumerate(per_layer):
            for t, c in enumerate(per_dir):
                mark(c.grad_fn, "cell", _state_label("c", t, layer, d, cfg), layer=layer, d=d, t=t)
    # The stacks: y's producer (the twin wraps one direction's stack in a single-input cat), h_n, c_n, head.
    if num_dirs == 1:
        mark(_through_single_cat(y.grad_fn), "y", f"y = stack({_steps_text(steps)})")
    else:
        mark(y.grad_fn, "y", f"y = cat(forward and reverse stacks of {_steps_text(steps)})")
        for d, (stack_fn, _) in enumerate(y.grad_fn.next_functions):
            mark(stack_fn, "layer_output", f"stack({_steps_text(steps)}), layer {cfg.num_layers - 1} "
                 f"{DIRECTIONS[d]}")
    mark(h_n.grad_fn, "final_state", h_n_label)
    if c_n is not None:
        mark(c_n.grad_fn, "final_state", "c_n = stack(final c of each layer/direction)")
    if head_out is not None:
        mark(head_out.grad_fn, "head", "out = fc(y[:, -1]).view(-1, head_size, 1)")
    graph = _walk(cfg, value.grad_fn, y.grad_fn, special, names, show_parameters)
    keep_alive.clear()
    return graph


def _state_label(symbol: str, t: int, layer: int, d: int, cfg: ExplainConfig) -> str:
    equation = _fill(STATE_EQUATIONS.get((cfg.cell, symbol), ""), cfg, layer, d, t)
    return f"{symbol}_{t} ({_where(cfg, layer, d)})" + (f"\n{equation}" if equation else "")


def _through_single_cat(fn):
    """A CatBackward with a single input is a no-op wrapper (the twin cats one stack): return that input."""
    if fn is not None and type(fn).__name__.startswith("CatBackward"):
        inputs = [g for g, _ in fn.next_functions if g is not None]
        if len(inputs) == 1:
            return inputs[0]
    return fn


def _param_kind(name: str) -> str:
    """'weight_ih_l0_reverse' -> 'ih', 'bias_hh_l1' -> 'hh', 'lin_r.weight' -> 'lin_r', 'head.fc.bias' -> 'head'."""
    if name.startswith("head."):
        return "head"
    if m := re.match(r"(?:weight|bias)_(ih|hh)_l\d+", name):
        return m.group(1)
    if m := re.match(r"(lin_\w+)\.", name):
        return m.group(1)
    return "param"


def _role(op: str, kids: list[tuple[str, int]], cell: str) -> str | None:
    """What an op computes inside a cell step, from its autograd op and its inputs' roles (with the output index
    of a split): a key of ROLE_LABELS or a state's role ("h", "c"); None when it is not a known cell op."""
    tags = {tag for tag, _ in kids}
    pairs = set(kids)  # a previous state absent at the first step (zeros) has no graph node: it is just missing
    if op == "addmm":
        for kind, role in (("ih", "gi_all"), ("hh", "gh"), ("lin_r", "lin_r"), ("lin_z", "lin_z"),
                           ("lin_in", "lin_in"), ("lin_hn", "lin_hn"), ("head", "head_fc")):
            if kind in tags:
                return role
        return None
    if op == "select":
        return "gi" if "gi_all" in tags else ("x_t" if "x" in tags else None)
    if op == "split":
        return {"gi": "split_i", "gh": "split_h", "pre_all": "split_g"}.get(next(iter(tags), ""))
    if op == "cat":
        if "x_t" in tags and tags - {"x_t"} <= {"h"}:
            return "cat_xh"
        return "cat_dirs" if tags == {"layer_output"} and len(kids) == 2 else None
    if op == "add":
        if pairs == {("split_i", 0), ("split_h", 0)}:
            return "pre_r"
        if pairs == {("split_i", 1), ("split_h", 1)}:
            return "pre_z"
        if tags == {"split_i", "r_hn"} and ("split_i", 2) in pairs:
            return "pre_n"
        if tags == {"lin_in", "answer_r_hn"}:
            return "answer_pre_n"
        if tags == {"gi", "gh"}:
            return "pre_all"
        if tags == {"cand", "keep"}:
            return "h"
        if tags == {"f_c", "i_g"}:
            return "c"
        return None
    if op == "sigmoid":
        if tags in ({"pre_r"}, {"lin_r"}):
            return "r"
        if tags in ({"pre_z"}, {"lin_z"}):
            return "z"
        if tags == {"split_g"}:
            return {0: "i", 1: "f", 3: "o"}.get(kids[0][1])
        return None
    if op == "tanh":
        if tags in ({"pre_n"}, {"answer_pre_n"}):
            return "n"
        if tags == {"split_g"} and kids[0][1] == 2:
            return "g"
        if tags == {"c"}:
            return "tanh_c"
        return "h" if tags == {"pre_all"} and cell == "rnn_tanh" else None
    if op == "relu":
        return "h" if tags == {"pre_all"} and cell == "rnn_relu" else None
    if op == "rsub":
        return "one_minus_z" if tags == {"z"} else None
    if op == "mul":
        if pairs == {("r", 0), ("split_h", 2)}:
            return "r_hn"
        if tags == {"r", "lin_hn"}:
            return "answer_r_hn"
        if tags == {"one_minus_z", "n"}:
            return "cand"
        if "z" in tags and (tags - {"z"}) <= {"h"}:
            return "keep"
        if "f" in tags and (tags - {"f"}) <= {"c"}:
            return "f_c"
        if tags == {"i", "g"}:
            return "i_g"
        if tags == {"o", "tanh_c"}:
            return "h"
        return None
    return None


def _walk(cfg: ExplainConfig, target_fn, y_fn_raw, special: dict, names: dict[int, str],
          show_parameters: bool) -> BackwardGraph:
    """Breadth-first walk over next_functions from the target (and y); single-input cats and transposes of
    parameters are folded away, parameters dropped when not `show_parameters`; each op inside a cell step is
    labelled with what it computes and tagged with its step."""
    ids: dict[int, str] = {}
    objs: dict[int, object] = {}  # keep the Python wrappers alive so id() stays unique during the walk
    on_path: set[int] = set()
    raw_edges: list[tuple[int, int]] = []

    def visit(root, mark: bool) -> None:
        queue = [root]
        seen: set[int] = set()
        while queue:
            fn = queue.pop(0)
            if fn is None or id(fn) in seen:
                continue
            seen.add(id(fn))
            objs[id(fn)] = fn
            if mark:
                on_path.add(id(fn))
            for child, _ in fn.next_functions:
                if child is None:
                    continue
                objs[id(child)] = child
                raw_edges.append((id(child), id(fn)))
                queue.append(child)

    visit(target_fn, True)
    visit(y_fn_raw, False)

    # Fold: single-input cats (the twin's one-direction cat) and TBackward0 of a parameter.
    alias: dict[int, int] = {}
    for key, fn in objs.items():
        name = type(fn).__name__
        inputs = [g for g, _ in fn.next_functions if g is not None]
        if key in special and special[key][0] in ("hidden", "cell"):
            continue
        single_cat = name.startswith("CatBackward") and len(inputs) == 1
        param_transpose = name == "TBackward0" and len(inputs) == 1 and type(inputs[0]).__name__ == "AccumulateGrad"
        if single_cat or param_transpose:
            alias[key] = id(inputs[0])

    def resolve(key: int) -> int:
        while key in alias:
            key = alias[key]
        return key

    # Lower layers' stacked outputs: a stack (not y, not h_n/c_n) whose inputs are h nodes.
    for key, fn in objs.items():
        if key in special or not type(fn).__name__.startswith("StackBackward"):
            continue
        states = [special.get(id(g)) for g, _ in fn.next_functions if g is not None]
        if states and all(s is not None and s[0] == "hidden" for s in states):
            layer, d = states[0][2]["layer"], states[0][2]["d"]
            special[key] = ("layer_output", f"{_where(cfg, layer, d)} output = stack({_steps_text(cfg.seq_len)})",
                            {})

    roles = _roles(cfg, objs, special, names, resolve)
    steps = _steps(objs, special, resolve)

    nodes: dict[str, GraphNode] = {}
    keys = [k for k in objs if k not in alias]
    for key in keys:
        fn = objs[key]
        op = type(fn).__name__
        step = steps.get(key)
        if op == "AccumulateGrad":
            var = fn.variable
            pname = names.get(id(var), "leaf")
            kind = "input" if pname == "x" else "parameter"
            if kind == "parameter" and not show_parameters:
                continue
            label = "x (input)" if kind == "input" else pname
            node = GraphNode(id="", op=op, label=label, kind=kind)
        elif key in special:
            kind, label, extra = special[key]
            node = GraphNode(id="", op=op, label=label, kind=kind, layer=extra.get("layer"),
                             direction=DIRECTIONS[extra["d"]] if "d" in extra else None, t=extra.get("t"),
                             step=step if kind in ("hidden", "cell") else None, role=roles.get(key))
        elif key == id(target_fn):
            node = GraphNode(id="", op=op, label=f"target = {cfg.target}", kind="target")
        else:
            role = roles.get(key)
            node = GraphNode(id="", op=op, label=_op_label(cfg, fn, role, step, special, resolve), step=step,
                             role=role)
        node.id = f"n{len(ids)}"
        node.on_target_path = any(k in on_path for k in (key, *[a for a, b in alias.items() if resolve(a) == key]))
        ids[key] = node.id
        nodes[node.id] = node
    edges: list[tuple[str, str]] = []
    for src, dst in raw_edges:
        s, d = resolve(src), resolve(dst)
        if s == d or s not in ids or d not in ids:
            continue
        edge = (ids[s], ids[d])
        if edge not in edges:
            edges.append(edge)
    hidden_ids, cell_ids = {}, {}
    for key, (kind, _, extra) in special.items():
        if kind in ("hidden", "cell") and key in ids:
            target_map = hidden_ids if kind == "hidden" else cell_ids
            target_map[(extra["layer"], extra["d"], extra["t"])] = ids[key]
    y_key = resolve(id(y_fn_raw))
    return BackwardGraph(config=cfg, nodes=nodes, edges=edges, target_id=ids[id(target_fn)], y_id=ids[y_key],
                         hidden_ids=hidden_ids, cell_ids=cell_ids)


def _roles(cfg: ExplainConfig, objs: dict[int, object], special: dict, names: dict[int, str],
           resolve) -> dict[int, str]:
    """Each node's role (see `_role`): leaves by parameter name, states by kind, ops from their inputs' roles; a
    reshape carries its input's meaning to its consumers and is labelled "reshape"."""
    meaning: dict[int, str] = {}
    labels: dict[int, str] = {}

    def meaning_of(key: int) -> str:
        if key in meaning:
            return meaning[key]
        fn = objs[key]
        op = type(fn).__name__
        if op == "AccumulateGrad":
            pname = names.get(id(fn.variable), "leaf")
            tag = "x" if pname == "x" else _param_kind(pname)
        elif key in special:
            kind = special[key][0]
            tag = {"hidden": "h", "cell": "c"}.get(kind, kind)
            if tag in ("h", "c"):
                labels[key] = tag
        else:
            kids = [(meaning_of(resolve(id(child))), int(nr)) for child, nr in fn.next_functions if child is not None]
            if short_op(op) in ("view", "unsafeview", "reshape") and len(kids) == 1:
                tag = kids[0][0]
                if tag in ("x", "gi_all", "layer_output", "cat_dirs"):
                    labels[key] = "reshape"
            else:
                tag = _role(short_op(op), kids, cfg.cell) or "?"
                if tag in ROLE_LABELS:
                    labels[key] = tag
        meaning[key] = tag
        return tag

    for key in objs:
        meaning_of(key)
    return labels


def _steps(objs: dict[int, object], special: dict, resolve) -> dict[int, tuple[int, int, int]]:
    """The cell step (layer, direction, t) of each state and of each op that only that step's states read.

    From every h_t / c_t the walk goes to the ops it reads, stopping at other states, other special nodes and
    leaves. An op reached from one step belongs to it; one reached from several steps of the same layer and
    direction (the input projection done for all t at once) belongs to none.
    """
    reached: dict[int, set[tuple[int, int, int]]] = {}
    for key, (kind, _, extra) in special.items():
        if kind not in ("hidden", "cell") or key not in objs:
            continue
        step = (extra["layer"], extra["d"], extra["t"])
        reached.setdefault(key, set()).add(step)
        queue, seen = [key], {key}
        while queue:
            fn = objs[queue.pop()]
            for child, _ in fn.next_functions:
                if child is None:
                    continue
                ck = resolve(id(child))
                if ck in seen or ck in special or ck not in objs or type(objs[ck]).__name__ == "AccumulateGrad":
                    continue
                seen.add(ck)
                reached.setdefault(ck, set()).add(step)
                queue.append(ck)
    return {key: next(iter(s)) for key, s in reached.items() if len(s) == 1}


def _op_label(cfg: ExplainConfig, fn, role: str | None, step: tuple[int, int, int] | None, special: dict,
              resolve) -> str:
    """An op's label: what it computes (its role, with the step filled in) over the autograd op's short name."""
    op = short_op(type(fn).__name__)
    if role in ROLE_LABELS:
        layer, d, t = step if step is not None else (0, 0, 0)
        if step is None and role == "gi_all":
            layer = _layer_of(fn, special, resolve)
        return f"{_fill(ROLE_LABELS[role], cfg, layer, d, t)}\n({op})"
    if op == "select" and hasattr(fn, "_saved_index"):
        index = int(fn._saved_index)
        index = index - 2**64 if index >= 2**63 else index
        dim = int(fn._saved_dim)
        dim = dim - 2**64 if dim >= 2**63 else dim
        source = next((special[resolve(id(c))][0] for c, _ in fn.next_functions if c is not None
                       and resolve(id(c)) in special), None)
        name = {"y": "y", "final_state": "h_n", "head": "out"}.get(source or "", "")
        if dim >= 0:
            return f"{name}[{':, ' * dim}{index}]\n({op})"
    return op


def _layer_of(fn, special: dict, resolve) -> int:
    """The layer of W_ih in an input projection (from the stack it reads: 0 when it reads x)."""
    for child, _ in fn.next_functions:
        if child is None:
            continue
        key = resolve(id(child))
        if key in special and special[key][0] == "layer_output":
            match = re.search(r"layer (\d+)", special[key][1])
            return int(match.group(1)) + 1 if match else 0
        if type(child).__name__ != "AccumulateGrad":
            inner = _layer_of(child, special, resolve)
            if inner:
                return inner
    return 0


def backward_graph_dot(cfg: ExplainConfig, rankdir: str = "TB", show_parameters: bool = True,
                       legend: bool = True) -> str:
    """The DOT string of `backward_graph(cfg)` (ConfigError / TargetError for bad or too-large configs)."""
    return backward_graph(cfg, show_parameters=show_parameters).to_dot(rankdir=rankdir, legend=legend)


__all__ = [
    "KINDS",
    "MAX_GRAPH_LAYERS",
    "MAX_GRAPH_STEPS",
    "BackwardGraph",
    "GraphNode",
    "backward_graph",
    "backward_graph_dot",
    "check_tiny",
    "dot_quote",
    "graph_facts",
    "short_op",
]
