"""The "Your model" page under AppTest: real uploads through st.file_uploader (AppTest supports them in 1.67), the
verdict equal to gx.watch run independently in the test, and one clear message (no exception) per bad file."""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest
from torch import nn

import gru_explainer as gx
from gru_explainer.state_dict import example_state_dict, sequences_csv
from gru_explainer.target import parse_target

PAGE = str(Path(__file__).resolve().parents[1] / "app_pages" / "your_model.py")


def saved(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def run(at: AppTest) -> AppTest:
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def upload(at: AppTest, data: bytes, name: str = "model.pt", key: str = "ym_file") -> AppTest:
    at.file_uploader(key=key).set_value((name, data, "application/octet-stream"))
    return run(at)


@pytest.fixture
def at() -> AppTest:
    return run(AppTest.from_file(PAGE, default_timeout=120))


def independent_verdict(module: nn.RNNBase, x: torch.Tensor, target: str = "y[:, -1].sum()") -> str:
    """gx.watch on the test's own batch-first copy of the module: the verdict the page must show."""
    twin = type(module)(module.input_size, module.hidden_size, num_layers=module.num_layers, bias=module.bias,
                        batch_first=True, bidirectional=module.bidirectional,
                        **({"nonlinearity": module.nonlinearity} if isinstance(module, nn.RNN) else {}))
    twin.load_state_dict(module.state_dict())
    twin.eval()
    xx = x.to(torch.float32).clone().requires_grad_()
    with gx.watch(twin) as rec:
        y, finals = twin(xx)
        named = {"y": y, "h_n": finals[0], "c_n": finals[1]} if isinstance(twin, nn.LSTM) else {"y": y, "h_n": finals}
        parse_target(target).evaluate(named).backward()
    return rec.calls[0].verdict()


def seeded(batch: int, steps: int, size: int, seed: int = 0) -> torch.Tensor:
    """The page's seeded random input."""
    return torch.randn((batch, steps, size), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def verdicts(at: AppTest) -> list[str]:
    return [m.value for m in at.markdown if m.value.startswith("**Call 0**")]


def test_example_shows_charts_and_the_verdict(at: AppTest) -> None:
    assert not at.error
    assert "built-in example" in at.info[0].value
    assert len(at.get("vega_lite_chart")) >= 3
    state = torch.load(io.BytesIO(example_state_dict()), weights_only=True)
    module = nn.GRU(3, 16, num_layers=2)
    module.load_state_dict({k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")})
    assert verdicts(at) == [independent_verdict(module, seeded(2, 10, 3))]
    assert "ym_module" not in [w.key for w in at.selectbox]  # one recurrent module: nothing to pick


def table_values(at: AppTest) -> dict[str, str]:
    frame = at.table[0].value
    return dict(zip(frame["property"], frame["value"], strict=True))


@pytest.mark.parametrize(("make", "target"), [
    (lambda: nn.LSTM(4, 6, num_layers=2, bidirectional=True), "h_n.sum() + c_n[0].mean()"),
    (lambda: nn.GRU(2, 5, bias=False), "y[:, 3].sum()"),
])
def test_good_upload_end_to_end(at: AppTest, make, target: str) -> None:
    torch.manual_seed(1)
    module = make()
    upload(at, saved({f"net.rnn.{k}": v for k, v in module.state_dict().items()}))
    at.text_input(key="ym_target").set_value(target)
    run(at)
    assert not at.error and not at.info
    values = table_values(at)
    assert values["key prefix"] == "net.rnn."
    assert values["layers"] == str(module.num_layers) and values["hidden size"] == str(module.hidden_size)
    assert values["bidirectional"] == ("yes" if module.bidirectional else "no")
    assert values["bias"] == ("yes" if module.bias else "no")
    assert len(at.get("vega_lite_chart")) >= 3
    assert verdicts(at) == [independent_verdict(module, seeded(2, 10, module.input_size), target)]
    code = at.code[-1].value
    assert "weights_only=True" in code and "gx.watch(module)" in code and "prefix = 'net.rnn.'" in code


def test_batch_steps_and_seed_change_the_input(at: AppTest) -> None:
    torch.manual_seed(2)
    module = nn.GRU(3, 4)
    upload(at, saved(module.state_dict()))
    at.number_input(key="ym_batch").set_value(3)
    at.number_input(key="ym_steps").set_value(7)
    at.number_input(key="ym_seed").set_value(11)
    run(at)
    assert verdicts(at) == [independent_verdict(module, seeded(3, 7, 3, seed=11))]


def test_several_modules_let_the_user_pick(at: AppTest) -> None:
    torch.manual_seed(3)
    encoder, decoder = nn.GRU(3, 4), nn.LSTM(4, 4)
    state = {**{f"encoder.{k}": v for k, v in encoder.state_dict().items()},
             **{f"decoder.{k}": v for k, v in decoder.state_dict().items()}}
    upload(at, saved(state))
    assert "2 recurrent modules" in at.warning[0].value
    box = at.selectbox(key="ym_module")
    assert box.options == ["encoder. — GRU, 1 layer(s), input 3, hidden 4", "decoder. — LSTM, 1 layer(s), input 4, "
                                                                            "hidden 4"]
    assert verdicts(at) == [independent_verdict(encoder, seeded(2, 10, 3))]
    box.set_value("decoder.")
    run(at)
    assert verdicts(at) == [independent_verdict(decoder, seeded(2, 10, 4))]


def test_rnn_nonlinearity_is_the_users_choice_default_tanh(at: AppTest) -> None:
    torch.manual_seed(4)
    relu = nn.RNN(3, 5, nonlinearity="relu")
    upload(at, saved(relu.state_dict()))
    radio = at.radio(key="ym_nonlinearity")
    assert radio.value == "tanh"
    assert any("does not store its nonlinearity" in c.value for c in at.caption)
    tanh = nn.RNN(3, 5)
    tanh.load_state_dict(relu.state_dict())
    assert verdicts(at) == [independent_verdict(tanh, seeded(2, 10, 3))]
    radio.set_value("relu")
    run(at)
    assert verdicts(at) == [independent_verdict(relu, seeded(2, 10, 3))]
    assert "RNN relu" in table_values(at)["cell"]


def test_csv_input(at: AppTest) -> None:
    torch.manual_seed(5)
    module = nn.GRU(2, 3, num_layers=2)
    upload(at, saved(module.state_dict()))
    at.radio(key="ym_input").set_value("CSV file")
    run(at)
    assert any("Upload a CSV" in i.value for i in at.info) and not verdicts(at)
    x = torch.randn(4, 6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    upload(at, sequences_csv(x).encode(), "inputs.csv", key="ym_csv")
    assert not at.error
    assert verdicts(at) == [independent_verdict(module, x)]
    assert "read_sequences" in at.code[-1].value and "'inputs.csv'" in at.code[-1].value
    upload(at, b"sequence,step,a\n0,0,1\n", "bad.csv", key="ym_csv")
    assert [e.value for e in at.error] == ["bad.csv: 1 feature column(s) (a); this module's input size is 2, so "
                                           "exactly 2 are needed besides 'sequence' and 'step'"]
    assert not verdicts(at)


class Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"echo pwned > {self.marker}",))


BAD_FILES = {
    "not_a_state_dict": (lambda tmp: saved(torch.zeros(3)), "not a state dict: it holds a single tensor"),
    "text": (lambda tmp: b"just some text", "not a PyTorch file"),
    "malicious": (lambda tmp: saved({"weight_ih_l0": Evil(tmp / "pwned")}), "refused, nothing was run"),
    "malicious_plain_pickle": (lambda tmp: pickle.dumps(Evil(tmp / "pwned")), "would import and call"),
    "truncated": (lambda tmp: saved(nn.GRU(3, 4).state_dict())[:300], "truncated or damaged"),
    "impossible_shapes": (lambda tmp: saved({"weight_ih_l0": torch.zeros(12, 3), "weight_hh_l0": torch.zeros(10, 4)}),
                          "impossible shapes"),
    "no_recurrent": (lambda tmp: saved(nn.Linear(2, 2).state_dict()), "no nn.GRU, nn.LSTM or nn.RNN"),
    "too_large": (lambda tmp: saved(nn.GRU(3, 300).state_dict()), "hidden size 300; at most 256"),
    "whole_module": (lambda tmp: saved(nn.GRU(3, 4)), "torch.nn.modules.rnn.GRU"),
    "empty": (lambda tmp: b"", "the file is empty"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_each_bad_file_gets_its_one_message(at: AppTest, tmp_path: Path, case: str) -> None:
    make, needle = BAD_FILES[case]
    upload(at, make(tmp_path), "bad.pt")
    assert len(at.error) == 1, [e.value for e in at.error]
    assert needle in at.error[0].value, at.error[0].value
    assert at.error[0].value.startswith("bad.pt: ")  # the message names the file
    assert not at.get("vega_lite_chart") and not verdicts(at)
    assert not (tmp_path / "pwned").exists()


def test_bad_target_gets_one_message(at: AppTest) -> None:
    for target, needle in (("c_n.sum()", "c_n"), ("__import__('os').system('echo hi')", "__import__"),
                           ("y[:, 1]", "scalar")):
        at.text_input(key="ym_target").set_value(target)
        run(at)
        assert len(at.error) == 1 and needle in at.error[0].value.replace("\\", ""), [e.value for e in at.error]
        assert not verdicts(at)


def test_too_many_state_elements_get_one_message(at: AppTest) -> None:
    at.number_input(key="ym_batch").set_value(64)
    at.number_input(key="ym_steps").set_value(512)
    run(at)
    assert len(at.error) == 1 and "state-size limit" in at.error[0].value


def fresh(query: dict[str, str]) -> AppTest:
    """A new session opened with this query string (a shared link)."""
    at = AppTest.from_file(PAGE, default_timeout=120)
    at.query_params.update(query)
    return run(at)


def test_view_state_round_trips_through_the_url(at: AppTest) -> None:
    """Every control but the files lives in the URL (model.*): a fresh session opened with it shows the same view,
    on the built-in example at once and, once the same file is uploaded again, on that file."""
    assert not {k for k in at.query_params if k.startswith("model.")}  # defaults write nothing
    assert any("never your files" in c.value for c in at.caption)
    torch.manual_seed(6)
    encoder, decoder = nn.GRU(3, 4), nn.RNN(4, 4, nonlinearity="relu", num_layers=2)
    data = saved({**{f"encoder.{k}": v for k, v in encoder.state_dict().items()},
                  **{f"decoder.{k}": v for k, v in decoder.state_dict().items()}})
    upload(at, data)
    at.selectbox(key="ym_module").set_value("decoder.")
    run(at)
    at.radio(key="ym_nonlinearity").set_value("relu")
    at.text_input(key="ym_target").set_value("h_n.sum()")
    at.number_input(key="ym_steps").set_value(7)
    at.number_input(key="ym_seed").set_value(5)
    at.selectbox(key="ym_dtype").set_value("float64")
    at.toggle(key="ym_log").set_value(False)
    at.selectbox(key="ym_hm_layer").set_value(0)
    run(at)
    query = {k: v for k, v in at.query_params.items() if k.startswith("model.")}
    assert query == {"model.module": "decoder.", "model.nonlinearity": "relu", "model.target": "h_n.sum()",
                     "model.T": "7", "model.seed": "5", "model.dtype": "float64", "model.log": "false",
                     "model.layer": "0"}
    other = AppTest.from_file(PAGE, default_timeout=120)
    other.query_params.update(query)
    run(other)  # the link alone: the built-in example with these settings, and a notice that decoder. is not in it
    assert [w.value for w in other.warning] and all("decoder." in w.value for w in other.warning)
    keys = ("ym_target", "ym_steps", "ym_seed", "ym_dtype", "ym_log", "ym_hm_layer")
    assert all(other.session_state[key] == at.session_state[key] for key in keys)
    upload(other, data)  # the same file again: the same module, nonlinearity, numbers
    assert other.selectbox(key="ym_module").value == "decoder." and other.radio(key="ym_nonlinearity").value == "relu"
    assert all(other.session_state[key] == at.session_state[key] for key in keys)
    assert verdicts(other) == verdicts(at) and len(verdicts(at)) == 1 and "relu" in verdicts(at)[0].lower()
    assert other.dataframe[0].value.equals(at.dataframe[0].value)


def test_bad_url_values_are_noticed_and_fall_back() -> None:
    query = {"model.T": "0", "model.batch": "1e309", "model.direction": "sideways", "model.input": "[x](http://e.x)",
             "model.target": "__import__('os')", "model.log": "maybe", "model.nonlinearity": "gelu"}
    at = fresh(query)
    notices = [w.value for w in at.warning]
    assert len(notices) == len(query), notices
    for key in query:
        assert any(key in n for n in notices), key
    assert not at.error and not {k for k in at.query_params if k.startswith("model.")}  # bad values leave the URL
    assert at.text_input(key="ym_target").value == "y[:, -1].sum()" and at.number_input(key="ym_steps").value == 10
    assert at.toggle(key="ym_log").value is True and at.radio(key="ym_input").value == "Seeded random"
    assert len(verdicts(at)) == 1
    run(at)
    assert not at.warning  # each notice once
