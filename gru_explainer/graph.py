"""The autograd graph of a tiny unrolled model, as a DOT string: where the two gradient paths of h_t go.

`backward_graph(cfg)` builds the unrolled twin (every h_t a graph node), evaluates the target, and walks
``grad_fn`` / ``next_functions`` from the target's ``grad_fn`` (and from y's, so y is shown even when the target
does not read it). `BackwardGraph.to_dot()` renders it; Streamlit's ``st.graphviz_chart`` draws DOT in the
browser, so neither the graphviz binary nor the Python package is needed.

Edges point in the FORWARD direction (producer -> consumer, like torchviz); gradients flow against them. The
highlighted nodes show the puzzle: the node that produced y (the stack of the top layer's states) is read only
by the target, while each h_t is read by that stack AND by the next step of the recurrence. So dL/dh_t collects
gradient through the recurrence, but y.grad (∂L/∂y) only through y's own single consumer path.

Only tiny models are drawn: seq_len <= MAX_GRAPH_STEPS and num_layers <= MAX_GRAPH_LAYERS (ConfigError
otherwise). The graph's structure does not depend on hidden/batch/input size or device; it is built on the CPU.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .config import ExplainConfig, Limits
from .errors import ConfigError
from .explain import compile_target
from .models import SeedAnswerGRU, UnrolledTwin, build
from .report import DIRECTIONS

MAX_GRAPH_STEPS = 4
MAX_GRAPH_LAYERS = 2

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
    "op": {"shape": "ellipse", "style": "filled", "fillcolor": "#ffffff", "color": "#9a9a9a",
           "fontcolor": "#333333", "fontsize": "9"},
    "input": {"shape": "box", "style": "filled", "fillcolor": "#eeeeee", "color": "#555555",
              "fontcolor": "#1f1f1f"},
    "parameter": {"shape": "note", "style": "filled", "fillcolor": "#f4f4f4", "color": "#bbbbbb",
                  "fontcolor": "#777777", "fontsize": "8", "height": "0.2", "margin": "0.03"},
}
LEGEND: dict[str, str] = {
    "target": "the target (scalar)",
    "y": "y: the stacked output (read only by the target)",
    "hidden": "h_t: the hidden state the recurrence uses",
    "cell": "c_t: the LSTM cell state",
    "layer_output": "a lower layer's stacked output (read by the layer above)",
    "final_state": "h_n / c_n: the stacked final states",
    "head": "the linear head's output",
    "op": "any other autograd op",
    "input": "the input x",
    "parameter": "a parameter (AccumulateGrad leaf)",
}


@dataclass
class GraphNode:
    """One autograd node: its DOT id, the grad_fn class name, a display label, a kind (see KINDS) and, for
    states, the layer / direction / step it computes."""

    id: str
    op: str
    label: str
    kind: str = "op"
    layer: int | None = None
    direction: str | None = None
    t: int | None = None
    on_target_path: bool = True


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

    def consumers(self, node_id: str) -> list[str]:
        """Ids of the nodes that read `node_id`'s result."""
        return [dst for src, dst in self.edges if src == node_id]

    def producers(self, node_id: str) -> list[str]:
        """Ids of the nodes whose results `node_id` reads."""
        return [src for src, dst in self.edges if dst == node_id]

    def to_dot(self, rankdir: str = "TB", legend: bool = True) -> str:
        """The graph as a DOT string (white background, so it reads in light and dark themes)."""
        if rankdir not in ("TB", "LR", "BT", "RL"):
            raise ValueError(f"rankdir must be TB, LR, BT or RL; got {rankdir!r}")
        lines = [
            "digraph backward {",
            f"  graph [rankdir={rankdir}, bgcolor=\"white\", fontname=\"Helvetica\", fontsize=11, nodesep=0.15, "
            "ranksep=0.25, labelloc=t, label=" + dot_quote(_title(self.config)) + "];",
            "  node [fontname=\"Helvetica\", fontsize=10, height=0.3];",
            "  edge [color=\"#888888\", arrowsize=0.5];",
        ]
        for node in self.nodes.values():
            attrs = dict(STYLES[node.kind])
            if not node.on_target_path:
                attrs["style"] = attrs["style"] + ",dashed"
            attrs["label"] = node.label
            attrs["tooltip"] = f"{node.op}" + ("" if node.on_target_path else " (not on the target's graph)")
            lines.append(f"  {node.id} [{_attrs(attrs)}];")
        special = {"y", "hidden", "cell", "target"}
        for src, dst in self.edges:
            kinds = (self.nodes[src].kind, self.nodes[dst].kind)
            if kinds[0] == "parameter":
                attrs = {"color": "#cccccc", "style": "dashed", "arrowsize": "0.3"}
            elif kinds[0] == "y" or (kinds[0] == "hidden" and kinds[1] in special | {"layer_output", "final_state"}):
                attrs = {"color": "#e45756", "penwidth": "1.6"}
            elif kinds[0] in ("hidden", "cell"):
                attrs = {"color": "#4c78a8", "penwidth": "1.4"}
            else:
                attrs = {}
            lines.append(f"  {src} -> {dst}" + (f" [{_attrs(attrs)}]" if attrs else "") + ";")
        if legend:
            used = [k for k in KINDS if any(n.kind == k for n in self.nodes.values())]
            lines.append("  subgraph cluster_legend {")
            lines.append("    label=\"Legend\"; style=\"rounded\"; color=\"#bbbbbb\"; fontsize=10;")
            for kind in used:
                attrs = dict(STYLES[kind])
                attrs["label"] = LEGEND[kind]
                lines.append(f"    legend_{kind} [{_attrs(attrs)}];")
            for a, b in zip(used, used[1:], strict=False):  # invisible edges stack the legend entries
                lines.append(f"    legend_{a} -> legend_{b} [style=invis];")
            lines.append("  }")
        lines.append("}")
        return "\n".join(lines) + "\n"


def dot_quote(text: str) -> str:
    """`text` as a DOT double-quoted string: backslashes and quotes escaped, newlines as centred line breaks."""
    escaped = str(text).replace("\\", "\\\\").replace('"', '\\"')
    escaped = escaped.replace("\r\n", "\n").replace("\r", "\n").replace("\n", "\\n")
    return f'"{escaped}"'


def _attrs(attrs: dict[str, str]) -> str:
    return ", ".join(f"{k}={dot_quote(v)}" for k, v in attrs.items())


def _title(cfg: ExplainConfig) -> str:
    dirs = "bidirectional" if cfg.bidirectional else "unidirectional"
    return (f"Autograd graph of target = {cfg.target}  ({cfg.cell}, {cfg.num_layers} layer(s), {dirs}, "
            f"T = {cfg.seq_len}; arrows: forward data flow, gradients flow against them)")


def short_op(name: str) -> str:
    """'AddmmBackward0' -> 'addmm', 'AccumulateGrad' -> 'leaf'."""
    if name == "AccumulateGrad":
        return "leaf"
    stem = re.sub(r"Backward\d*$", "", name)
    return stem.lower() or name


def _steps_text(steps: int) -> str:
    return "h_0" if steps == 1 else f"h_0..h_{steps - 1}"


def check_tiny(cfg: ExplainConfig) -> None:
    """ConfigError unless cfg is small enough to draw (seq_len <= 4, num_layers <= 2) and otherwise valid."""
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
    where = f"layer {layer}" if cfg.num_directions == 1 else f"layer {layer}, {DIRECTIONS[d]}"
    return f"{symbol}_{t} ({where})"


def _through_single_cat(fn):
    """A CatBackward0 with a single input is a no-op wrapper (the twin cats one stack): return that input."""
    if fn is not None and type(fn).__name__.startswith("CatBackward"):
        inputs = [g for g, _ in fn.next_functions if g is not None]
        if len(inputs) == 1:
            return inputs[0]
    return fn


def _walk(cfg: ExplainConfig, target_fn, y_fn_raw, special: dict, names: dict[int, str],
          show_parameters: bool) -> BackwardGraph:
    """Breadth-first walk over next_functions from the target (and y); single-input cats and transposes of
    parameters are folded away, parameters dropped when not `show_parameters`."""
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
            where = f"layer {layer}" if cfg.num_directions == 1 else f"layer {layer} {DIRECTIONS[d]}"
            special[key] = ("layer_output", f"{where} output = stack({_steps_text(cfg.seq_len)})", {})

    nodes: dict[str, GraphNode] = {}
    keys = [k for k in objs if k not in alias]
    for key in keys:
        fn = objs[key]
        op = type(fn).__name__
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
            node = GraphNode(id="", op=op, label=f"{label}\n[{short_op(op)}]", kind=kind, layer=extra.get("layer"),
                             direction=DIRECTIONS[extra["d"]] if "d" in extra else None, t=extra.get("t"))
        elif key == id(target_fn):
            node = GraphNode(id="", op=op, label=f"target = {cfg.target}\n[{short_op(op)}]", kind="target")
        else:
            node = GraphNode(id="", op=op, label=short_op(op))
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
    "short_op",
]
