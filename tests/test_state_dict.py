"""gru_explainer.state_dict: architecture inference on real state_dicts, one clear refusal per bad file (a REAL
malicious pickle included: nothing runs), the CSV format, and explanations equal to a hand-unrolled reference."""

from __future__ import annotations

import io
import os
import pickle
import random
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch
from torch import nn

import gru_explainer as gx
from gru_explainer import ConfigError, Limits, TargetError
from gru_explainer.state_dict import (
    MAX_UPLOAD_MB,
    StateDictError,
    build_module,
    example_state_dict,
    explain_state_dict,
    infer_spec,
    load_state_dict,
    normalise_prefix,
    pick_module,
    random_inputs,
    read_sequences,
    recurrent_modules,
    sequences_csv,
    watch_snippet,
)

from .reference import unrolled_step_grads

ROOT = Path(__file__).resolve().parents[1]
F64 = torch.float64


def saved(obj: object, legacy: bool = False) -> bytes:
    """torch.save(obj) as bytes (the zip format, or the legacy pickle format)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer, _use_new_zipfile_serialization=not legacy)
    return buffer.getvalue()


def kind_of(data: bytes, **kwargs) -> StateDictError:
    """The StateDictError load_state_dict raises for `data` (fails the test if it loads)."""
    with pytest.raises(StateDictError) as exc:
        load_state_dict(data, "bad.pt", **kwargs)
    assert str(exc.value).startswith("bad.pt: ")
    return exc.value


MODULES = {
    "gru": lambda: nn.GRU(3, 5),
    "gru_2l_bidir_nobias": lambda: nn.GRU(4, 6, num_layers=2, bidirectional=True, bias=False),
    "lstm_3l_bidir": lambda: nn.LSTM(2, 7, num_layers=3, bidirectional=True),
    "lstm_nobias": lambda: nn.LSTM(5, 3, bias=False),
    "rnn_tanh_2l": lambda: nn.RNN(3, 4, num_layers=2),
    "rnn_relu_bidir": lambda: nn.RNN(2, 3, bidirectional=True, nonlinearity="relu"),
    "gru_f64": lambda: nn.GRU(3, 4, dtype=F64),
}


@pytest.mark.parametrize("name", list(MODULES))
@pytest.mark.parametrize("legacy", [False, True])
def test_architecture_is_inferred_from_a_real_state_dict(name: str, legacy: bool) -> None:
    torch.manual_seed(0)
    module = MODULES[name]()
    state = load_state_dict(saved(module.state_dict(), legacy), "m.pt")
    spec = pick_module(state)
    expected_cell = {nn.GRU: "gru", nn.LSTM: "lstm", nn.RNN: "rnn"}[type(module)]
    assert (spec.prefix, spec.cell, spec.num_layers, spec.input_size, spec.hidden_size, spec.bidirectional,
            spec.bias) == ("", expected_cell, module.num_layers, module.input_size, module.hidden_size,
                           module.bidirectional, module.bias)
    assert spec.num_parameters == sum(p.numel() for p in module.parameters())
    assert spec.dtype == str(next(module.parameters()).dtype).removeprefix("torch.")
    nonlinearity = getattr(module, "nonlinearity", "tanh")
    rebuilt = build_module(state, spec, nonlinearity, spec.dtype)
    assert type(rebuilt) is type(module) and getattr(rebuilt, "nonlinearity", None) == getattr(module, "nonlinearity",
                                                                                               None)
    for key, value in module.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[key], value), key


def test_prefixed_keys_and_several_modules() -> None:
    class Seq2Seq(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(10, 3)
            self.encoder = nn.GRU(3, 8, num_layers=2, batch_first=True)
            self.decoder = nn.Module()
            self.decoder.rnn = nn.LSTM(8, 8, bidirectional=True)
            self.fc = nn.Linear(16, 10)

    state = load_state_dict(saved(Seq2Seq().state_dict()), "s2s.pt")
    found = recurrent_modules(state)
    assert list(found) == ["encoder.", "decoder.rnn."]
    assert (found["encoder."].cell, found["encoder."].num_layers, found["encoder."].hidden_size) == ("gru", 2, 8)
    assert (found["decoder.rnn."].cell, found["decoder.rnn."].bidirectional) == ("lstm", True)
    with pytest.raises(StateDictError) as exc:
        pick_module(state, name="s2s.pt")
    assert exc.value.kind == "several_modules"
    assert "2 recurrent modules ('encoder', 'decoder.rnn')" in str(exc.value)
    assert pick_module(state, normalise_prefix("decoder.rnn")).prefix == "decoder.rnn."
    with pytest.raises(StateDictError, match="no recurrent module has the prefix 'dec.'"):
        pick_module(state, "dec.")
    assert normalise_prefix("") == "" and normalise_prefix(" encoder. ") == "encoder."


class Evil:
    """A pickle payload that runs a shell command when unpickled (os.system), writing a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"echo pwned > {self.marker}",))


@pytest.mark.parametrize("how", ["torch.save", "pickle_protocol_4", "pickle_protocol_0", "legacy_torch.save"])
def test_a_malicious_pickle_is_refused_and_nothing_runs(tmp_path: Path, how: str) -> None:
    marker = tmp_path / "pwned"
    payload = {"weight_ih_l0": Evil(marker)}
    data = {"torch.save": lambda: saved(payload), "legacy_torch.save": lambda: saved(payload, legacy=True),
            "pickle_protocol_4": lambda: pickle.dumps(payload, protocol=4),
            "pickle_protocol_0": lambda: pickle.dumps(payload, protocol=0)}[how]()
    err = kind_of(data)
    assert not marker.exists(), "the payload ran"
    assert err.kind == "code"
    assert "posix.system" in str(err) or "nt.system" in str(err)
    assert "nothing was run" in str(err) and "weights_only=True" in str(err)
    # The payload is real: a plain unpickler runs it (a harmless echo into a file of this test's own folder).
    if how.startswith("pickle"):
        pickle.loads(data)
        assert marker.read_text().strip() == "pwned"


def test_a_whole_pickled_module_is_refused_with_the_state_dict_hint() -> None:
    err = kind_of(saved(nn.GRU(3, 4)))
    assert err.kind == "code"
    assert "torch.nn.modules.rnn.GRU" in str(err) and "model.state_dict()" in str(err)


@pytest.mark.parametrize("legacy", [False, True])
def test_a_truncated_file_is_refused(legacy: bool) -> None:
    data = saved(nn.LSTM(3, 4, num_layers=2).state_dict(), legacy)
    for cut in (10, 60, len(data) // 3, len(data) // 2, len(data) - 7):
        err = kind_of(data[:cut])
        assert err.kind == "truncated", (cut, str(err))
        assert "truncated or damaged" in str(err)


@pytest.mark.parametrize(("data", "kind", "needle"), [
    (b"", "empty", "empty (0 bytes)"),
    (b"hello, I am a text file\n", "not_torch", "not a PyTorch file"),
    (b"PK\x03\x04 not really a zip", "truncated", "truncated or damaged"),
    (saved(torch.zeros(3, 4)), "not_state_dict", "single tensor of shape [3, 4]"),
    (saved([torch.zeros(2)]), "not_state_dict", "holds a list"),
    (saved({}), "not_state_dict", "empty"),
    (saved({"w": torch.zeros(2), "step": 3}), "not_state_dict", "the value of 'step' is a int"),
    (saved({"model_state_dict": {"weight_ih_l0": torch.zeros(3, 3)}, "epoch": 3}), "not_state_dict",
     "checkpoint['model_state_dict']"),
    (saved({1: torch.zeros(2)}), "not_state_dict", "found 1"),
])
def test_not_a_state_dict(data: bytes, kind: str, needle: str) -> None:
    err = kind_of(data)
    assert err.kind == kind and needle in str(err), str(err)


def test_zip_without_data_pkl_is_not_a_torch_file() -> None:
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("readme.txt", "hi")
    err = kind_of(buffer.getvalue())
    assert err.kind == "not_torch" and "no data.pkl" in str(err)


def test_too_large_by_bytes_and_by_parameters() -> None:
    data = saved(nn.GRU(3, 4).state_dict())
    err = kind_of(data, max_bytes=len(data) - 1)
    assert err.kind == "too_large" and f"{len(data):,} bytes is too large" in str(err)
    err = kind_of(data, max_elements=10)
    assert err.kind == "too_large" and "108 parameters" in str(err)
    state = load_state_dict(saved(nn.GRU(3, 300).state_dict()))
    with pytest.raises(StateDictError) as exc:
        pick_module(state, limits=Limits())
    assert exc.value.kind == "too_large" and "hidden size 300; at most 256" in str(exc.value)
    assert pick_module(state, limits=Limits.local()).hidden_size == 300


def test_no_recurrent_module() -> None:
    state = load_state_dict(saved(nn.Linear(3, 4).state_dict()))
    with pytest.raises(StateDictError) as exc:
        recurrent_modules(state, "lin.pt")
    assert exc.value.kind == "no_recurrent" and "'weight', 'bias'" in str(exc.value)


def _broken(change) -> dict:
    state = dict(nn.GRU(3, 4, num_layers=2, bidirectional=True).state_dict())
    change(state)
    return state


@pytest.mark.parametrize(("change", "needle"), [
    (lambda s: s.__setitem__("weight_hh_l0", torch.zeros(10, 4)), "G = 1 (nn.RNN), 3 (nn.GRU) or 4 (nn.LSTM)"),
    (lambda s: s.__setitem__("weight_ih_l1", torch.zeros(12, 4)), "weight_ih_l1 has shape [12, 4], expected [12, 8]"),
    (lambda s: s.__setitem__("bias_hh_l0_reverse", torch.zeros(11)), "bias_hh_l0_reverse has shape [11]"),
    (lambda s: s.__setitem__("weight_ih_l0", torch.zeros(12)), "weight_ih_l0 has shape [12]; a weight_ih is 2-D"),
    (lambda s: s.__setitem__("weight_hh_l1", torch.zeros(12, 4, dtype=torch.int64)), "floating-point"),
    (lambda s: [s.pop(k) for k in list(s) if k.endswith("_l1_reverse")], "layer 1 has no _reverse weights"),
    (lambda s: s.pop("bias_ih_l1"), "bias_ih and bias_hh must both be present"),
    (lambda s: [s.pop(k) for k in ("bias_ih_l1", "bias_hh_l1")], "some layers have biases and others do not"),
    (lambda s: s.pop("weight_hh_l0"), "weight_hh is missing"),
    (lambda s: s.update({k.replace("_l1", "_l3"): s.pop(k) for k in list(s) if "_l1" in k}), "layer(s) 1, 2 missing"),
])
def test_impossible_shapes(change, needle: str) -> None:
    state = load_state_dict(saved(_broken(change)))
    found = recurrent_modules(state, "bad.pt")
    err = found[""]
    assert isinstance(err, StateDictError) and err.kind == "impossible_shapes", err
    assert needle in str(err), str(err)
    with pytest.raises(StateDictError, match=re.escape(needle)):
        pick_module(state, name="bad.pt")


def test_lstm_projections_are_refused_naming_proj_size() -> None:
    err = recurrent_modules(load_state_dict(saved(nn.LSTM(3, 8, proj_size=4).state_dict())))[""]
    assert isinstance(err, StateDictError) and err.kind == "unsupported" and "proj_size" in str(err)


def test_one_broken_module_does_not_hide_the_others() -> None:
    state = {**{f"a.{k}": v for k, v in nn.GRU(3, 4).state_dict().items()},
             **{f"b.{k}": v for k, v in nn.GRU(3, 4).state_dict().items()}}
    state["b.weight_hh_l0"] = torch.zeros(5, 4)
    found = recurrent_modules(load_state_dict(saved(state)))
    assert found["a."].cell == "gru" and isinstance(found["b."], StateDictError)


def test_the_error_pickles_with_its_kind() -> None:
    err = pickle.loads(pickle.dumps(StateDictError("truncated", "x: truncated")))
    assert err.kind == "truncated" and str(err) == "x: truncated"


def test_upload_cap_matches_the_server_config() -> None:
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text(encoding="utf-8"))
    assert config["server"]["maxUploadSize"] == MAX_UPLOAD_MB


# --- CSV ---------------------------------------------------------------------------------------------------------


def test_csv_round_trip_in_any_row_order() -> None:
    x = torch.randn(3, 5, 2, dtype=F64, generator=torch.Generator().manual_seed(1))
    text = sequences_csv(x)
    assert torch.equal(read_sequences(text.encode(), 2), x)
    header, *rows = text.strip().splitlines()
    random.Random(0).shuffle(rows)
    order = list(dict.fromkeys(int(row.split(",")[0]) for row in rows))  # batch order: first appearance
    assert torch.equal(read_sequences(("\n".join([header, *rows]) + "\n").encode(), 2), x[order])
    labelled = "sequence,step,a,b\nfoo,1,3,4\nbar,0,5,6\nfoo,0,1,2\nbar,1,7,8\n"
    assert read_sequences(labelled.encode(), 2).tolist() == [[[1, 2], [3, 4]], [[5, 6], [7, 8]]]


@pytest.mark.parametrize(("text", "needle"), [
    ("", "the file is empty"),
    ("sequence,step,a,b\n", "no data rows"),
    (b"sequence,step,a,b\n0,0,\xff,1\n", "not UTF-8 text"),
    ("seq,step,a,b\n0,0,1,2\n", "no 'sequence' column"),
    ("sequence,t,a,b\n0,0,1,2\n", "no 'step' column"),
    ("sequence,step,a\n0,0,1\n", "1 feature column(s) (a); this module's input size is 2"),
    ("sequence,step,a,b,c\n0,0,1,2,3\n", "3 feature column(s)"),
    ("sequence,step,a,b\n0,0,1,x\n", "row 2, column 'b': 'x' is not a finite number"),
    ("sequence,step,a,b\n0,0,1,2\n0,1,inf,2\n", "row 3, column 'a': 'inf' is not a finite number"),
    ("sequence,step,a,b\n0,0,1,2\n0,1,1e999,2\n", "'1e999' is not a finite number"),
    ("sequence,step,a,b\n0,0,1,\n", "row 2, column 'b': '' is not a finite number"),
    ("sequence,step,a,b\n0,0.5,1,2\n", "row 2, column 'step': '0.5' is not an integer >= 0"),
    ("sequence,step,a,b\n0,-1,1,2\n", "is not an integer >= 0"),
    ("sequence,step,a,b\n0,0,1,2\n0,0,1,2\n", "row 3: sequence '0' has step 0 twice"),
    ("sequence,step,a,b\n0,0,1,2\n0,2,1,2\n", "its steps must be 0..1"),
    ("sequence,step,a,b\n0,0,1,2\n0,1,1,2\n1,0,1,2\n", "sequence '1' has 1 steps but sequence '0' has 2"),
    (",step,a,b\n0,0,1,2\n", "no 'sequence' column"),
    ("sequence,step,a,a\n0,0,1,2\n", "column names must be unique"),
    ("sequence,step,a,b\n,0,1,2\n", "column 'sequence' is empty"),
    ('sequence,step,a,b\n0,0,"1,2\n', "not a readable CSV"),
])
def test_bad_csv_is_refused_with_the_row_and_column(text: str | bytes, needle: str) -> None:
    with pytest.raises(StateDictError) as exc:
        read_sequences(text if isinstance(text, bytes) else text.encode(), 2, "in.csv")
    assert exc.value.kind == "bad_csv"
    assert str(exc.value).startswith("in.csv: ") and needle in str(exc.value), str(exc.value)


def test_csv_limits() -> None:
    many = "sequence,step,a\n" + "".join(f"{b},0,1\n" for b in range(65))
    with pytest.raises(StateDictError, match="65 sequences; at most 64"):
        read_sequences(many.encode(), 1, limits=Limits())
    with pytest.raises(StateDictError, match="too large"):
        read_sequences(b"sequence,step,a\n0,0,1\n", 1, max_bytes=5)


# --- Explanations ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("make", "target", "nonlinearity"), [
    (lambda: nn.GRU(3, 5, num_layers=2, bidirectional=True, batch_first=True, dtype=F64), "y[:, -1].sum()", "tanh"),
    (lambda: nn.LSTM(2, 4, num_layers=2, bias=False, batch_first=True, dtype=F64),
     "h_n[-1].pow(2).mean() + c_n.sum()", "tanh"),
    (lambda: nn.RNN(3, 4, nonlinearity="relu", batch_first=True, dtype=F64), "y[:, 2].sum()", "relu"),
])
def test_explanation_equals_a_hand_unrolled_reference(make, target: str, nonlinearity: str) -> None:
    torch.manual_seed(3)
    module = make()
    state = load_state_dict(saved({f"enc.{k}": v for k, v in module.state_dict().items()}))
    spec = pick_module(state)
    x = random_inputs(spec, 2, 6, seed=5)
    result = explain_state_dict(state, spec, x, target, nonlinearity, "float64")
    lstm = isinstance(module, nn.LSTM)

    def loss_fn(y, h_n, c_n):
        tensors = {"y": y, "h_n": h_n, "c_n": c_n}
        return gx.target.parse_target(target).evaluate({k: v for k, v in tensors.items() if v is not None})

    ref = unrolled_step_grads(module, x, loss_fn)
    assert float((result.report.hidden_grad - ref["hidden"]).abs().max()) <= 1e-10
    assert float((result.report.input_grad - ref["input"]).abs().max()) <= 1e-10
    if lstm:
        assert float((result.report.cell_grad - ref["cell"]).abs().max()) <= 1e-10
    # the verdict is the watched call's own, computed here independently with gx.watch on the original module
    xx = x.clone().requires_grad_()
    module.eval()
    with gx.watch(module) as rec:
        y, finals = module(xx)
        named = {"y": y, "h_n": finals[0], "c_n": finals[1]} if lstm else {"y": y, "h_n": finals}
        loss = gx.target.parse_target(target).evaluate(named)
        loss.backward()
    assert result.verdict == rec.calls[0].verdict()
    assert result.loss == float(loss.detach())


def test_explanation_refuses_bad_targets_and_sizes() -> None:
    state = load_state_dict(saved(nn.GRU(3, 4).state_dict()))
    spec = pick_module(state)
    x = random_inputs(spec, 2, 4, 0)
    with pytest.raises(TargetError, match="c_n"):
        explain_state_dict(state, spec, x, "c_n.sum()")
    with pytest.raises(TargetError):
        explain_state_dict(state, spec, x, "__import__('os').system('echo hi')")
    with pytest.raises(ConfigError, match="input size 4|shape"):
        explain_state_dict(state, spec, torch.zeros(2, 4, 4, dtype=F64), "y.sum()")
    with pytest.raises(ConfigError, match="state-size limit"):
        explain_state_dict(state, spec, torch.zeros(64, 512, 3, dtype=F64), "y.sum()", limits=Limits(max_hidden_size=4,
                                                                                                    max_state_elements=1000))


def test_snippet_reproduces_the_verdict(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = nn.LSTM(3, 4, num_layers=2)
    (tmp_path / "my model.pt").write_bytes(saved({f"rnn.{k}": v for k, v in module.state_dict().items()}))
    state = load_state_dict((tmp_path / "my model.pt").read_bytes())
    spec = pick_module(state)
    x = random_inputs(spec, 2, 5, seed=7)
    result = explain_state_dict(state, spec, x, "y[:, 1].sum() + c_n.mean()")
    code = watch_snippet(spec, result.config, "my model.pt", seed=7)
    (tmp_path / "snippet.py").write_text(code, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "snippet.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120, check=False)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith(result.verdict)
    # with a CSV input
    (tmp_path / "in.csv").write_text(sequences_csv(x), encoding="utf-8")
    code = watch_snippet(spec, result.config, "my model.pt", csv_name="in.csv")
    (tmp_path / "snippet_csv.py").write_text(code, encoding="utf-8")
    run = subprocess.run([sys.executable, "snippet_csv.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120, check=False)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith(result.verdict)


def test_example_file_is_a_prefixed_gru() -> None:
    state = load_state_dict(example_state_dict(), "example.pt")
    spec = pick_module(state)
    assert (spec.prefix, spec.cell, spec.num_layers, spec.input_size, spec.hidden_size) == ("encoder.", "gru", 2, 3, 16)
    assert infer_spec(state, "encoder.") == spec
