"""ExplainConfig validation: every bad field is refused by name, before anything is allocated."""

from __future__ import annotations

import importlib

import pytest
import torch

from gru_explainer import ConfigError, ExplainConfig, Limits, TargetError, available_devices, explain
from gru_explainer.config import resolve_device

explain_module = importlib.import_module("gru_explainer.explain")  # the module (the package exports the function)


@pytest.mark.parametrize(("change", "message"), [
    ({"cell": "transformer"}, "cell must be one of gru, lstm, rnn_tanh, rnn_relu, answer_gru; got 'transformer'"),
    ({"hidden_size": 0}, "hidden_size must be between 1 and 256, got 0"),
    ({"hidden_size": 257}, "hidden_size must be between 1 and 256, got 257"),
    ({"hidden_size": 3.5}, "hidden_size must be an integer between 1 and 256, got 3.5"),
    ({"hidden_size": True}, "hidden_size must be an integer"),
    ({"num_layers": 5}, "num_layers must be between 1 and 4, got 5"),
    ({"input_size": -1}, "input_size must be between 1 and 64, got -1"),
    ({"seq_len": 513}, "seq_len must be between 1 and 512, got 513"),
    ({"batch_size": 0}, "batch_size must be between 1 and 64"),
    ({"head": "mlp"}, "head must be one of none, linear; got 'mlp'"),
    ({"head_size": 0}, "head_size must be between 1 and 64"),
    ({"dtype": "float16"}, "dtype must be one of float32, float64; got 'float16'"),
    ({"seed": -1}, "seed must be between 0 and 2147483647"),
    ({"bidirectional": "yes"}, "bidirectional must be true or false"),
    ({"weight_scale": 0.0}, "weight_scale must be > 0 and <= 10"),
    ({"weight_scale": float("nan")}, "weight_scale must be a finite number"),
    ({"weight_scale": "2"}, "weight_scale must be a finite number"),
    ({"device": "tpu"}, "device 'tpu' is not available on this machine; available: auto, cpu"),
    ({"device": 0}, "device must be a string"),
    ({"target": "   "}, "target must be a non-empty expression"),
    ({"cell": "answer_gru", "num_layers": 2}, "cell 'answer_gru' (the seed answer's hand-written GRU) has exactly 1"),
    ({"batch_size": 64, "seq_len": 512, "hidden_size": 256}, "must be at most 524,288 (the state-size limit)"),
])
def test_bad_fields_raise_config_error_naming_the_field(change: dict, message: str) -> None:
    cfg = ExplainConfig().replace(**change)
    with pytest.raises(ConfigError) as info:
        explain(cfg)
    assert message in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(("change", "message"), [
    ({"target": "c_n.sum()"}, "c_n (the final cell state) exists only for cell 'lstm'"),
    ({"target": "out.sum()"}, "out (the head output) exists only with head 'linear'"),
    ({"target": "y[:, 10].sum()"}, "out of range"),
    ({"target": "y[:, -1]"}, "scalar"),
    ({"target": "__import__('os').system('true')"}, "__import__"),
])
def test_bad_targets_raise_target_error(change: dict, message: str) -> None:
    with pytest.raises(TargetError) as info:
        explain(ExplainConfig().replace(**change))
    assert message in str(info.value)


def test_nothing_is_built_for_an_invalid_config(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args, **kwargs):
        raise AssertionError("build() ran for an invalid config")

    monkeypatch.setattr(explain_module, "build", fail)
    for cfg in (ExplainConfig(hidden_size=10_000_000), ExplainConfig(target="y[:, 99].sum()"),
                ExplainConfig(seq_len=10**9, batch_size=10**9)):
        with pytest.raises((ConfigError, TargetError)):
            explain(cfg)


def test_engine_and_config_type_are_checked() -> None:
    with pytest.raises(ConfigError, match="engine must be one of fused, twin"):
        explain(ExplainConfig(), engine="cudnn")
    with pytest.raises(ConfigError, match="needs an ExplainConfig"):
        explain({"cell": "gru"})  # type: ignore[arg-type]


def test_limits_can_be_raised_deliberately(monkeypatch: pytest.MonkeyPatch) -> None:
    big = ExplainConfig(hidden_size=300, seq_len=4, batch_size=1, num_layers=1)
    with pytest.raises(ConfigError, match="hidden_size must be between 1 and 256"):
        big.validate()
    big.validate(Limits.local())
    monkeypatch.setenv("GRU_EXPLAINER_LIMITS", "local")
    assert explain(big).hidden_grad.shape == (1, 1, 1, 4, 300)


def test_presets_and_dict_round_trip() -> None:
    for name in ("seed-mymodel", "seed-secondmodel", "seed-answer-gru"):
        cfg = ExplainConfig.preset(name)
        cfg.validate()
        assert ExplainConfig.from_dict(cfg.to_dict()) == cfg
        assert (cfg.input_size, cfg.hidden_size, cfg.batch_size, cfg.seq_len) == (3, 32, 2, 10)
    assert ExplainConfig.preset("seed-mymodel").head == "linear"
    with pytest.raises(ConfigError, match="unknown preset"):
        ExplainConfig.preset("seed")
    with pytest.raises(ConfigError, match="unknown config field"):
        ExplainConfig.from_dict({"cell": "gru", "hiddn_size": 3})


def test_devices() -> None:
    devices = available_devices()
    assert devices[0] == "cpu"
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type in (expected, "mps")
    with pytest.raises(ConfigError, match="available: auto, cpu"):
        resolve_device("cuda:9")
