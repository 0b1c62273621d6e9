"""Devices and engines: both engines agree on the CPU, the table has the expected rows, CUDA rows when present."""

from __future__ import annotations

import math

import pytest
import torch

from gru_explainer import ConfigError, ExplainConfig, TargetError, available_devices, explain
from gru_explainer.compare import (
    COMPARE_COLUMNS,
    WHY_FUSED,
    compare,
    distinct_devices,
    fused_graph_census,
    max_abs_diff,
    tolerance,
)

SMALL = ExplainConfig(cell="gru", num_layers=2, hidden_size=8, seq_len=6, batch_size=2)
HAS_CUDA = torch.cuda.is_available()


@pytest.mark.parametrize("cell", ["gru", "lstm", "rnn_tanh", "rnn_relu"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_engines_agree_tightly_in_float64_on_cpu(cell: str, bidirectional: bool) -> None:
    cfg = SMALL.replace(cell=cell, bidirectional=bidirectional, dtype="float64", target="y.pow(2).mean()")
    table = compare(cfg, devices=["cpu"], repeats=1)
    assert list(table.columns) == list(COMPARE_COLUMNS)
    assert list(zip(table.device, table.engine, strict=True)) == [("cpu", "fused"), ("cpu", "twin")]
    assert table.agrees.all()
    assert (table.max_diff <= 1e-12).all(), table.max_diff.tolist()
    twin = table[table.engine == "twin"].iloc[0]
    assert twin.reference and twin.max_diff == 0.0
    assert (table.time_ms > 0).all()


def test_float32_tolerance_and_default_devices() -> None:
    table = compare(SMALL, repeats=1)
    assert list(table.device.unique()) == distinct_devices()
    assert len(table) == 2 * len(distinct_devices())
    cpu = table[table.device == "cpu"]
    assert cpu.agrees.all()
    assert (cpu.tolerance >= 1e-6).all() and (cpu.max_diff < 1e-5).all()
    if not HAS_CUDA:
        assert set(table.device) == {"cpu"}


def test_diffs_match_the_reports() -> None:
    cfg = SMALL.replace(cell="lstm", target="h_n.sum() + y[:, 2].sum()")
    table = compare(cfg, devices=["cpu"], engines=["fused"], repeats=1)
    fused, twin = explain(cfg, engine="fused"), explain(cfg, engine="twin")
    row = table.iloc[0]
    for name in ("hidden_grad", "stacked_grad", "input_grad"):
        expected = (getattr(fused, name).double() - getattr(twin, name).double()).abs().max().item()
        assert row[f"{name}_diff"] == pytest.approx(expected, abs=1e-15)


def test_answer_gru_runs_the_twin_for_both_engines() -> None:
    table = compare(ExplainConfig(cell="answer_gru", num_layers=1, hidden_size=8, seq_len=5), devices=["cpu"],
                    repeats=1)
    assert list(table.engine_used) == ["twin", "twin"] and table.agrees.all()


def test_progress_and_bad_input() -> None:
    calls: list[float] = []
    compare(SMALL, devices=["cpu"], repeats=1, progress=lambda f, m: calls.append(f))
    assert calls[0] == 0 and calls[-1] == 1.0 and len(calls) == 3
    with pytest.raises(ConfigError):
        compare(SMALL, devices=["tpu"])
    with pytest.raises(ConfigError):
        compare(SMALL, repeats=0)
    with pytest.raises(ConfigError):
        compare(SMALL, engines=["magic"])
    with pytest.raises(ConfigError):
        compare(SMALL.replace(hidden_size=-1))
    with pytest.raises(TargetError):
        compare(SMALL.replace(target="c_n.sum()"))


def test_distinct_devices() -> None:
    assert distinct_devices(["cpu", "cpu", "auto"])[0] == "cpu"
    devices = distinct_devices()
    assert devices[0] == "cpu" and len(devices) == len(set(devices))
    assert "cuda" not in devices  # only explicit indices
    if HAS_CUDA:
        current = torch.cuda.current_device()
        assert distinct_devices(["cuda", f"cuda:{current}"]) == [f"cuda:{current}"]
        assert len([d for d in devices if d.startswith("cuda")]) == torch.cuda.device_count()
    else:
        assert devices == available_devices()
        with pytest.raises(ConfigError, match="not available"):
            distinct_devices(["cuda"])


@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device on this machine")
def test_cuda_rows_agree_with_the_cpu_reference() -> None:  # pragma: no cover - needs a GPU
    for dtype in ("float32", "float64"):
        table = compare(SMALL.replace(dtype=dtype), repeats=1)
        gpu = table[table.device.str.startswith("cuda")]
        assert len(gpu) == 2 * torch.cuda.device_count()
        assert gpu.agrees.all(), gpu.to_string()
    census = fused_graph_census(SMALL)
    assert "CudnnRnnBackward0" in " ".join(census.kernels)


def test_max_abs_diff_handles_special_values() -> None:
    a = torch.tensor([1.0, math.inf, math.nan, 0.0])
    assert max_abs_diff(a, a.clone()) == 0.0
    assert max_abs_diff(a, torch.tensor([1.5, math.inf, math.nan, 0.0])) == 0.5
    assert max_abs_diff(a, torch.tensor([1.0, 1.0, math.nan, 0.0])) == math.inf
    assert max_abs_diff(a, torch.zeros(3)) == math.inf
    assert max_abs_diff(None, None) == 0.0 and max_abs_diff(a, None) == math.inf
    assert max_abs_diff(torch.zeros(0), torch.zeros(0)) == 0.0


def test_tolerance_depends_on_dtype_and_scale() -> None:
    assert tolerance("float64", 1.0) < tolerance("float32", 1.0)
    assert tolerance("float32", 100.0) > tolerance("float32", 1.0)
    assert tolerance("float32", math.inf) == tolerance("float32", 0.0)
    assert tolerance("float32", 1.0, "cuda:0") > tolerance("float32", 1.0, "cpu")  # TF32 in cuDNN
    assert tolerance("float64", 1.0, "cuda:0") == tolerance("float64", 1.0)


def test_fused_graph_census_on_cpu() -> None:
    lstm = fused_graph_census(SMALL.replace(cell="lstm", bidirectional=True), devices=["cpu"])
    assert list(lstm.columns) == ["device", "output_grad_fn", "nodes", "rnn_kernel_nodes", "kernels"]
    row = lstm.iloc[0]
    if torch.backends.mkldnn.is_available():  # one oneDNN node per layer and direction
        assert row.rnn_kernel_nodes == SMALL.num_layers * 2 and row.kernels == "MkldnnRnnLayerBackward0"
    gru = fused_graph_census(SMALL, devices=["cpu"]).iloc[0]
    assert gru.nodes > 10 and gru.rnn_kernel_nodes == 0
    with pytest.raises(ConfigError, match="no fused kernel"):
        fused_graph_census(ExplainConfig(cell="answer_gru", num_layers=1))


def _graph(module: torch.nn.Module, x: torch.Tensor) -> tuple[list[object], dict[int, str]]:
    """Every autograd node behind the fused module's output, and parameter id -> name."""
    y, _ = module(x)
    seen: dict[int, object] = {}
    stack = [y.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None or id(fn) in seen:
            continue
        seen[id(fn)] = fn
        stack.extend(child for child, _ in fn.next_functions)
    return list(seen.values()), {id(p): n for n, p in module.named_parameters()}


def _kernel_weights(nodes: list[object], names: dict[int, str], kind: str) -> list[set[str]]:
    """For each node of type `kind`: the names of the parameters it reads directly."""
    return [{names[id(child.variable)] for child, _ in node.next_functions
             if child is not None and hasattr(child, "variable") and id(child.variable) in names}
            for node in nodes if type(node).__name__ == kind]


def _suffixes(layers: int, directions: int) -> set[str]:
    return {f"_l{layer}" + ("_reverse" if d else "") for layer in range(layers) for d in range(directions)}


def _weights(suffix: str) -> set[str]:
    return {kind + suffix for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}


def test_why_fused_text() -> None:
    for phrase in ("cuDNN", "retain_grad", "dL/dh_t", "twin", "adjoint"):
        assert phrase in WHY_FUSED
    text = " ".join(WHY_FUSED.split())
    assert "one `MkldnnRnnLayerBackward0` node per layer and direction" in text
    assert "one call per layer and direction" in text and "oneDNN for float32 LSTMs on CPUs" in text
    assert "in the C++ loop every step's operations are autograd nodes" in text
    assert "one `CudnnRnnBackward0` node for the whole recurrence" in text


@pytest.mark.parametrize("bidirectional", [False, True])
def test_why_fused_matches_the_cpu_graph(bidirectional: bool) -> None:
    """The claims of WHY_FUSED about CPU graphs, counted on the real autograd graph of torch's modules."""
    layers, steps, directions = 3, 5, 2 if bidirectional else 1
    torch.manual_seed(0)
    x = torch.rand(2, steps, 3, requires_grad=True)
    lstm = torch.nn.LSTM(3, 4, num_layers=layers, batch_first=True, bidirectional=bidirectional)
    nodes, names = _graph(lstm, x)
    if torch.backends.mkldnn.is_available():
        # One oneDNN node per layer AND direction, each reading exactly that layer's and direction's weights.
        kernels = _kernel_weights(nodes, names, "MkldnnRnnLayerBackward0")
        assert len(kernels) == layers * directions
        assert sorted(map(sorted, kernels)) == sorted(sorted(_weights(s)) for s in _suffixes(layers, directions))
        assert not any("Tanh" in type(node).__name__ for node in nodes)  # no per-step nodes: all inside oneDNN
    for module in (torch.nn.LSTM(3, 4, num_layers=layers, batch_first=True, bidirectional=bidirectional,
                                 dtype=torch.float64),
                   torch.nn.GRU(3, 4, num_layers=layers, batch_first=True, bidirectional=bidirectional),
                   torch.nn.RNN(3, 4, num_layers=layers, batch_first=True, bidirectional=bidirectional)):
        dtype = next(module.parameters()).dtype
        nodes, names = _graph(module, x.detach().to(dtype).requires_grad_())
        kinds = [type(node).__name__ for node in nodes]
        assert not any("Rnn" in kind for kind in kinds), kinds  # PyTorch's C++ loop: no fused kernel node
        # ... but one node per step of every layer and direction (GRU: candidate tanh; LSTM: tanh(g), tanh(c)).
        per_step = {"GRU": 1, "RNN": 1, "LSTM": 2}[type(module).__name__]
        assert kinds.count("TanhBackward0") == per_step * steps * layers * directions


@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device on this machine")
def test_why_fused_matches_the_cuda_graph() -> None:  # pragma: no cover - needs a GPU
    x = torch.rand(2, 5, 3, device="cuda", requires_grad=True)
    for cls in (torch.nn.GRU, torch.nn.LSTM, torch.nn.RNN):
        module = cls(3, 4, num_layers=3, batch_first=True, bidirectional=True).cuda()
        nodes, names = _graph(module, x)
        kernels = _kernel_weights(nodes, names, "CudnnRnnBackward0")
        assert len(kernels) == 1 and kernels[0] == set().union(*map(_weights, _suffixes(3, 2)))


def test_difference_and_timing_charts() -> None:
    from gru_explainer.charts import difference_chart, difference_rows, timing_chart

    table = compare(SMALL, devices=["cpu"], repeats=1)
    rows = difference_rows(table)
    assert len(rows) == 3 * len(table)
    zero = rows[rows["diff"] == 0]
    assert (zero.status == "exactly 0 (identical)").all() and len(zero) >= 3  # the twin row is the reference
    positive = rows[rows["diff"] > 0]
    if len(positive):
        assert (zero.plot_x < positive.plot_x.min()).all()
    for chart in (difference_chart(table), timing_chart(table)):
        spec = chart.to_dict()
        assert spec["title"]["text"]


def test_compare_caps_its_work_below_the_state_limit() -> None:
    from gru_explainer import Limits

    budget = Limits().max_state_elements // 2
    big = ExplainConfig(num_layers=1, hidden_size=256, batch_size=budget // (256 * 256) + 1, seq_len=256)
    big.validate()  # allowed for explain() ...
    with pytest.raises(ConfigError, match="the comparison runs every engine on every device several times"):
        compare(big)  # ... but not for the comparison


def test_census_reports_a_failing_accelerator_as_a_device_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    from gru_explainer import DeviceError

    compare_module = importlib.import_module("gru_explainer.compare")
    monkeypatch.setattr(compare_module, "distinct_devices", lambda devices=None: ["cuda:0"])

    def broken_build(cfg, device):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(compare_module, "build", broken_build)
    with pytest.raises(DeviceError, match="choose device 'cpu'"):
        compare_module.fused_graph_census(ExplainConfig())
