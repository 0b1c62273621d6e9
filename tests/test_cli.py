"""The static export CLI, run as users run it: `python -m gru_explainer explain ... --out DIR` in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from gru_explainer import ExplainConfig, explain
from gru_explainer.cli import build_parser, config_from_args, main
from gru_explainer.config import CELLS, ENGINES, PRESETS
from gru_explainer.export import CHARTS, CSV_NAME, JSON_NAME, VERDICT_NAME, json_number, read_frame

ROOT = Path(__file__).resolve().parents[1]
CASES = {
    "default": ([], ExplainConfig()),
    "lstm_bidirectional": (["--cell", "lstm", "--bidirectional", "--num-layers", "2", "--seq-len", "12",
                            "--target", "y[:, 3].pow(2).sum()"],
                           ExplainConfig(cell="lstm", bidirectional=True, seq_len=12, target="y[:, 3].pow(2).sum()")),
}
EXPECTED_FILES = [CSV_NAME, JSON_NAME, VERDICT_NAME] + [f"{n}.{ext}" for n in CHARTS for ext in ("png", "svg")]


def run_cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """`python -m gru_explainer <args>` from the repository root, capturing text output."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("GRU_EXPLAINER_LIMITS", None)
    return subprocess.run([sys.executable, "-m", "gru_explainer", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, ExplainConfig]]:
    """Both cases exported by concurrent CLI processes (2 cores): name -> (out dir, the config it describes)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("GRU_EXPLAINER_LIMITS", None)
    running = {}
    for name, (args, cfg) in CASES.items():
        out = tmp_path_factory.mktemp(name)
        proc = subprocess.Popen([sys.executable, "-m", "gru_explainer", "explain", *args, "--out", str(out)],
                                cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        running[name] = (proc, out, cfg)
    results = {}
    for name, (proc, out, cfg) in running.items():
        stdout, stderr = proc.communicate(timeout=240)
        assert proc.returncode == 0, f"{name}: exit {proc.returncode}\n{stdout}\n{stderr}"
        assert str(out) in stdout and "wrote" in stdout
        results[name] = (out, cfg)
    return results


@pytest.fixture(scope="module")
def reports(exports):
    """The reports the exports should contain, computed in this process."""
    return {name: explain(cfg) for name, (_, cfg) in exports.items()}


@pytest.mark.parametrize("case", list(CASES))
def test_every_file_is_written(exports, case):
    out, _ = exports[case]
    missing = [name for name in EXPECTED_FILES if not (out / name).is_file()]
    assert not missing, f"missing {missing} in {sorted(p.name for p in out.iterdir())}"
    assert all((out / name).stat().st_size > 0 for name in EXPECTED_FILES)


@pytest.mark.parametrize("case", list(CASES))
def test_pngs_are_valid_and_not_blank(exports, case):
    out, _ = exports[case]
    for stem in CHARTS:
        path = out / f"{stem}.png"
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            assert image.format == "PNG"
            width, height = image.size
            assert width >= 300 and height >= 150, (stem, image.size)
            pixels = np.asarray(image.convert("L"), dtype=float)
        assert pixels.std() > 5, f"{stem}.png looks blank (pixel std {pixels.std():.2f})"
        assert (pixels < 128).mean() > 0.002, f"{stem}.png has almost no dark pixels (no text or marks)"


@pytest.mark.parametrize("case", list(CASES))
def test_svgs_parse_as_xml(exports, case):
    out, _ = exports[case]
    for stem in CHARTS:
        root = ET.parse(out / f"{stem}.svg").getroot()
        assert root.tag.endswith("svg"), root.tag
        assert sum(1 for _ in root.iter()) > 20, f"{stem}.svg has almost no elements"


@pytest.mark.parametrize("case", list(CASES))
def test_csv_equals_the_report_frame(exports, reports, case):
    out, _ = exports[case]
    frame = read_frame(out / CSV_NAME)
    expected = reports[case].frame
    assert list(frame.columns) == list(expected.columns)
    pd.testing.assert_frame_equal(frame, expected.reset_index(drop=True), check_dtype=False, check_exact=True)


@pytest.mark.parametrize("case", list(CASES))
def test_json_values_equal_the_report(exports, reports, case):
    out, cfg = exports[case]
    report = reports[case]
    data = json.loads((out / JSON_NAME).read_text(encoding="utf-8"))
    assert data["config"] == cfg.to_dict()
    assert ExplainConfig.from_dict(data["config"]) == cfg
    assert data["target"] == cfg.target
    assert data["target_value"] == json_number(report.target_value)
    assert data["engine"] == report.engine == "fused"
    assert data["device"] == report.device
    assert data["verdict"] == report.verdict()
    assert (out / VERDICT_NAME).read_text(encoding="utf-8").strip() == report.verdict().strip()
    assert data["stacked_zero_steps"] == report.stacked_zero_steps
    assert data["shapes"]["output"] == list(report.output.shape)
    assert data["shapes"]["hidden_grad"] == list(report.hidden_grad.shape)
    assert data["shapes"]["inputs"] == [cfg.batch_size, cfg.seq_len, cfg.input_size]
    if cfg.cell == "lstm":
        assert data["shapes"]["cell_grad"] == list(report.cell_grad.shape)
    else:
        assert data["shapes"]["cell_grad"] is None
    assert sorted(data["files"]) == sorted(EXPECTED_FILES)
    frame = report.frame
    assert len(data["norms"]) == len(frame.groupby(["quantity", "layer", "direction"]))
    for series in data["norms"]:
        rows = frame[(frame.quantity == series["quantity"]) & (frame.layer == series["layer"])
                     & (frame.direction == series["direction"])].sort_values("t")
        assert series["t"] == rows["t"].tolist()
        assert series["norm"] == [json_number(v) for v in rows["norm"]]
        assert series["exactly_zero"] == rows["exactly_zero"].tolist()
        assert series["structurally_zero"] == rows["structurally_zero"].tolist()


def test_lstm_bidirectional_export_shows_both_directions(exports):
    out, _ = exports["lstm_bidirectional"]
    data = json.loads((out / JSON_NAME).read_text(encoding="utf-8"))
    assert {s["direction"] for s in data["norms"] if s["quantity"] == "hidden_state"} == {"forward", "reverse"}
    assert any(s["quantity"] == "cell_state" for s in data["norms"])
    # y[:, 3] is read at step 3 only: y.grad is zero at every other step.
    assert data["stacked_zero_steps"] == [t for t in range(12) if t != 3]


@pytest.mark.parametrize(("args", "field", "in_a_process"), [
    (["--cell", "foo"], "--cell", True),
    (["--hidden-size", "0"], "hidden_size", False),
    (["--target", "__import__('os')"], "--target", False),
])
def test_bad_options_exit_2_with_a_message(tmp_path, capsys, args, field, in_a_process):
    """Exit code 2, the field named, no traceback, nothing on stdout or on disk: the first case as users run it (a
    real process and its exit status), the others through main() (the same code path, without a torch import each)."""
    out = tmp_path / "out"
    if in_a_process:
        result = run_cli("explain", *args, "--out", str(out))
        code, stdout, stderr = result.returncode, result.stdout, result.stderr
    else:
        with pytest.raises(SystemExit) as exc:  # anything but argparse's exit (a traceback) fails the test
            main(["explain", *args, "--out", str(out)])
        code, (stdout, stderr) = exc.value.code, capsys.readouterr()
    assert code == 2, (stdout, stderr)
    assert field in stderr
    assert "error:" in stderr
    assert "Traceback" not in stderr
    assert stdout == ""
    assert not out.exists(), "nothing may be written for bad input"


def test_help_documents_every_option(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["explain", "--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # undo argparse's line wrapping
    for option in ("--out", "--preset", "--engine", "--cell", "--num-layers", "--input-size", "--hidden-size",
                   "--bidirectional", "--head", "--head-size", "--seq-len", "--batch-size", "--target", "--device",
                   "--dtype", "--seed", "--weight-scale", "--scale", "--limits"):
        assert option in text, option
    for choice in (*CELLS, *ENGINES, *PRESETS):
        assert choice in text, choice
    assert "Default: 32" in text  # hidden size default
    assert "1..256" in text  # hidden size limit (hosted)
    assert "Exit codes" in text


def test_preset_and_overrides():
    parser = build_parser()
    args = parser.parse_args(["explain", "--preset", "seed-mymodel", "--seq-len", "7", "--out", "x"])
    cfg = config_from_args(args)
    assert cfg == ExplainConfig.preset("seed-mymodel").replace(seq_len=7)
    args = parser.parse_args(["explain", "--no-bidirectional", "--weight-scale", "0.5", "--out", "x"])
    assert config_from_args(args) == ExplainConfig(weight_scale=0.5)


def test_config_file_round_trip(exports, tmp_path, capsys):
    """--config report.json reproduces the exported config (in process, no images)."""
    out, cfg = exports["lstm_bidirectional"]
    again = tmp_path / "again"
    assert main(["explain", "--config", str(out / JSON_NAME), "--no-images", "--quiet", "--out", str(again)]) == 0
    assert capsys.readouterr().out == ""
    first = json.loads((out / JSON_NAME).read_text(encoding="utf-8"))
    second = json.loads((again / JSON_NAME).read_text(encoding="utf-8"))
    assert second["config"] == first["config"]
    assert second["target_value"] == first["target_value"]
    assert not list(again.glob("*.png"))


@pytest.mark.parametrize(("argv", "needle"), [
    (["--preset", "seed-answer-gru", "--num-layers", "2"], "answer_gru"),
    (["--seq-len", "512", "--batch-size", "64"], "state-size limit"),
    (["--heatmap-layer", "5"], "--heatmap-layer"),
    (["--device", "tpu9"], "device"),
    (["--target", "c_n.sum()"], "c_n"),
    (["--scale", "0"], "--scale"),
])
def test_invalid_configs_exit_2_in_process(tmp_path, capsys, argv, needle):
    with pytest.raises(SystemExit) as exc:
        main(["explain", *argv, "--no-images", "--out", str(tmp_path / "o")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert needle in err and "error:" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(("argv", "message"), [
    (["--scale", "0"], "argument --scale: must be a number > 0 and <= 8 (the PNG pixel scale), got '0'"),
    (["--scale", "8.5"], "argument --scale: must be a number > 0 and <= 8 (the PNG pixel scale), got '8.5'"),
    (["--scale", "nan"], "argument --scale: must be a number > 0 and <= 8 (the PNG pixel scale), got 'nan'"),
    (["--scale", "big"], "argument --scale: must be a number > 0 and <= 8 (the PNG pixel scale), got 'big'"),
    (["--heatmap-batch", "-1"], "argument --heatmap-batch: must be an integer >= 0, got '-1'"),
    (["--heatmap-layer", "2"],
     "argument --heatmap-layer: must be between 0 and 1 because this config has num_layers = 2, got 2"),
    (["--heatmap-direction", "1"],
     "argument --heatmap-direction: must be between 0 and 0 because this config has num_directions = 1, got 1"),
    (["--batch-size", "3", "--heatmap-batch", "3"],
     "argument --heatmap-batch: must be between 0 and 2 because this config has batch_size = 3, got 3"),
])
def test_output_options_get_their_own_message(tmp_path, capsys, argv, message):
    """An output option out of range is named with what it allows: exit 2, one error line, not 'invalid config'."""
    with pytest.raises(SystemExit) as exc:
        main(["explain", *argv, "--no-images", "--out", str(tmp_path / "o")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert errors == [f"python -m gru_explainer explain: error: {message}"], err
    assert "invalid config" not in err
    assert not (tmp_path / "o").exists()


_WITHOUT_VL_CONVERT = """
import importlib.abc, json, sys

class NoVlConvert(importlib.abc.MetaPathFinder):
    tried = []

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "vl_convert":
            self.tried.append(name)
            raise ImportError("No module named 'vl_convert' (simulated)")
        return None

sys.modules.pop("vl_convert", None)
sys.meta_path.insert(0, NoVlConvert())
from gru_explainer.cli import main
results = []
for argv in json.loads(sys.argv[1]):  # in this order: --no-images first, so nothing before it tried vl_convert
    NoVlConvert.tried.clear()
    code = main(["explain", *argv])
    results.append({"code": code, "tried": list(NoVlConvert.tried)})
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def without_vl_convert(tmp_path_factory) -> dict[str, tuple[dict, Path, str]]:
    """The CLI in one fresh interpreter where importing vl_convert fails (as if not installed), recording every try:
    first a text-only export, then one with images. name -> (result, out dir, stderr)."""
    base = tmp_path_factory.mktemp("without-vl-convert")
    runs = {"text-only": ["--no-images", "--out", str(base / "text-only")], "images": ["--out", str(base / "images")]}
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("GRU_EXPLAINER_LIMITS", None)
    done = subprocess.run([sys.executable, "-c", _WITHOUT_VL_CONVERT, json.dumps(list(runs.values()))], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=180, check=False)
    assert "Traceback" not in done.stderr, done.stderr
    results = json.loads(done.stdout.splitlines()[-1])
    return {name: (result, base / name, done.stderr) for name, result in zip(runs, results, strict=True)}


def test_no_images_needs_no_vl_convert(exports, without_vl_convert):
    """--no-images writes CSV, JSON and verdict without importing vl_convert, the same files as a full export."""
    result, out, stderr = without_vl_convert["text-only"]
    assert result == {"code": 0, "tried": []}, stderr
    assert sorted(p.name for p in out.iterdir()) == sorted([CSV_NAME, JSON_NAME, VERDICT_NAME])
    full, _ = exports["default"]
    text_only = json.loads((out / JSON_NAME).read_text(encoding="utf-8"))
    with_images = json.loads((full / JSON_NAME).read_text(encoding="utf-8"))
    assert text_only["files"] == [CSV_NAME, JSON_NAME, VERDICT_NAME]
    assert {k: v for k, v in text_only.items() if k != "files"} == {k: v for k, v in with_images.items()
                                                                     if k != "files"}
    assert (out / CSV_NAME).read_bytes() == (full / CSV_NAME).read_bytes()
    assert (out / VERDICT_NAME).read_bytes() == (full / VERDICT_NAME).read_bytes()


def test_images_without_vl_convert_exit_1_before_writing(without_vl_convert):
    result, out, stderr = without_vl_convert["images"]
    assert result["code"] == 1 and result["tried"], stderr
    assert "export failed: PNG/SVG export needs vl-convert-python" in stderr
    assert not out.exists()


def test_unwritable_out_exits_1(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert main(["explain", "--no-images", "--out", str(blocker / "sub")]) == 1
    assert "export failed" in capsys.readouterr().err


# --- explain --state-dict: the user's own model (issue 11 item 7) -------------------------------------------------


def _save_state(path: Path, state: dict) -> Path:
    import torch

    torch.save(state, path)
    return path


def _watched_verdict(module, x, target: str) -> tuple[str, float]:
    """gx.watch run here on a batch-first float32 twin of `module`: the verdict and loss the CLI must write."""
    import torch
    from torch import nn

    import gru_explainer as gx
    from gru_explainer.target import parse_target

    twin = type(module)(module.input_size, module.hidden_size, num_layers=module.num_layers, bias=module.bias,
                        batch_first=True, bidirectional=module.bidirectional)
    twin.load_state_dict(module.state_dict())
    twin.eval()
    xx = x.to(torch.float32).clone().requires_grad_()
    with gx.watch(twin) as rec:
        y, finals = twin(xx)
        named = {"y": y, "h_n": finals[0], "c_n": finals[1]} if isinstance(twin, nn.LSTM) else {"y": y, "h_n": finals}
        loss = parse_target(target).evaluate(named)
        loss.backward()
    return rec.calls[0].verdict(), float(loss.detach())


def test_state_dict_export_writes_the_watched_call(tmp_path, capsys):
    import torch
    from torch import nn

    torch.manual_seed(0)
    encoder, decoder = nn.GRU(3, 5, num_layers=2), nn.LSTM(5, 4, bidirectional=True)
    path = _save_state(tmp_path / "model.pt", {**{f"encoder.{k}": v for k, v in encoder.state_dict().items()},
                                               **{f"decoder.{k}": v for k, v in decoder.state_dict().items()}})
    out = tmp_path / "out"
    argv = ["explain", "--state-dict", str(path), "--module", "decoder", "--target", "c_n.sum() + y[:, 2].sum()",
            "--batch-size", "3", "--seq-len", "6", "--seed", "4", "--no-images", "--out", str(out)]
    assert main(argv) == 0
    assert "decoder. — LSTM" in capsys.readouterr().out
    x = torch.randn((3, 6, 5), generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    verdict, loss = _watched_verdict(decoder, x, "c_n.sum() + y[:, 2].sum()")
    data = json.loads((out / JSON_NAME).read_text(encoding="utf-8"))
    assert data["verdict"] == verdict
    assert (out / VERDICT_NAME).read_text(encoding="utf-8").strip() == verdict.strip()
    assert data["target_value"] == loss and data["target"] == "c_n.sum() + y[:, 2].sum()"
    assert data["engine"] == "watch"
    assert data["model"] | {"file": None} == {"file": None, "prefix": "decoder.", "cell": "lstm", "num_layers": 1,
                                              "input_size": 5, "hidden_size": 4, "bidirectional": True, "bias": True,
                                              "num_parameters": sum(p.numel() for p in decoder.parameters()),
                                              "file_dtype": "float32", "inputs": "random"}
    assert data["shapes"]["hidden_grad"] == [1, 2, 3, 6, 4]
    assert len(read_frame(out / CSV_NAME)) > 0


def test_state_dict_with_csv_inputs_and_images(tmp_path):
    import torch
    from torch import nn

    from gru_explainer.state_dict import sequences_csv

    torch.manual_seed(1)
    module = nn.GRU(2, 3)
    path = _save_state(tmp_path / "gru.pth", module.state_dict())
    x = torch.randn(2, 5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    (tmp_path / "in.csv").write_text(sequences_csv(x), encoding="utf-8")
    out = tmp_path / "out"
    result = run_cli("explain", "--state-dict", str(path), "--inputs", str(tmp_path / "in.csv"), "--out", str(out))
    assert result.returncode == 0, result.stderr
    data = json.loads((out / JSON_NAME).read_text(encoding="utf-8"))
    assert data["verdict"] == _watched_verdict(module, x, "y[:, -1].sum()")[0]
    assert sorted(data["files"]) == sorted(EXPECTED_FILES)
    assert all((out / name).stat().st_size > 0 for name in EXPECTED_FILES)


class _Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"echo pwned > {self.marker}",))


def test_bad_state_dict_files_exit_2_with_one_message(tmp_path, capsys):
    """Each bad file: exit code 2, one error line naming the file and what is wrong, nothing on stdout, no output
    folder, no traceback, and the malicious pickle never runs. The malicious file goes through a real process (as
    users run it); the others through `main()` in this process (the same code path, without a torch import each)."""
    import torch
    from torch import nn

    marker = tmp_path / "pwned"
    good = tmp_path / "good.pt"
    torch.save(nn.GRU(3, 4).state_dict(), good)
    files = {
        "evil.pt": (lambda p: torch.save({"weight_ih_l0": _Evil(str(marker))}, p), "refused, nothing was run"),
        "text.pt": (lambda p: p.write_text("hello"), "not a PyTorch file"),
        "tensor.pt": (lambda p: torch.save(torch.zeros(2), p), "not a state dict"),
        "cut.pt": (lambda p: p.write_bytes(good.read_bytes()[:200]), "truncated or damaged"),
        "shapes.pt": (lambda p: torch.save({"weight_ih_l0": torch.zeros(12, 3), "weight_hh_l0": torch.zeros(10, 4)}, p),
                      "impossible shapes"),
        "two.pt": (lambda p: torch.save({"a.weight_ih_l0": torch.zeros(4, 3), "a.weight_hh_l0": torch.zeros(4, 4),
                                         "b.weight_ih_l0": torch.zeros(4, 3), "b.weight_hh_l0": torch.zeros(4, 4)}, p),
                   "pick one by its key prefix with --module PREFIX"),
        "big.pt": (lambda p: torch.save(nn.GRU(3, 300).state_dict(), p), "hidden size 300; at most 256"),
    }
    for name, (write, needle) in files.items():
        path = tmp_path / name
        write(path)
        out = tmp_path / f"out-{name}"
        argv = ["explain", "--state-dict", str(path), "--no-images", "--out", str(out)]
        if name == "evil.pt":
            result = run_cli(*argv)
            code, stdout, stderr = result.returncode, result.stdout, result.stderr
        else:
            with pytest.raises(SystemExit) as exc:  # anything but argparse's exit (a traceback) fails the test
                main(argv)
            code, (stdout, stderr) = exc.value.code, capsys.readouterr()
        assert code == 2, (name, stdout, stderr)
        errors = [line for line in stderr.splitlines() if "error:" in line]
        assert len(errors) == 1 and needle in errors[0], (name, stderr)
        assert f"argument --state-dict: {path}: " in errors[0]
        assert "Traceback" not in stderr and stdout == ""
        assert not out.exists()
        assert not marker.exists(), f"the malicious pickle ran ({name})"


@pytest.mark.parametrize(("argv", "message"), [
    (["--cell", "lstm"], "argument --cell: not allowed with --state-dict (the architecture comes from the file)"),
    (["--preset", "seed-mymodel"], "argument --preset: not allowed with --state-dict"),
    (["--engine", "twin"], "argument --engine: only the fused engine explains a --state-dict"),
    (["--target", "out.sum()"], "invalid --target: out is not an output of your GRU; a target reads y, h_n"),
    (["--inputs", "in.csv", "--seq-len", "4"], "argument --seq-len: not allowed with --inputs"),
    (["--inputs", "missing.csv"], "argument --inputs: missing.csv: cannot read it"),
    (["--inputs", "in.csv"], "argument --inputs: in.csv: 1 feature column(s) (a); this module's input size is 3"),
    (["--module", "nope"], "no recurrent module has the prefix 'nope.'"),
    (["--heatmap-batch", "2"], "argument --heatmap-batch: must be between 0 and 1"),
])
def test_state_dict_option_errors_exit_2(tmp_path, capsys, monkeypatch, argv, message):
    import torch
    from torch import nn

    monkeypatch.chdir(tmp_path)
    torch.save(nn.GRU(3, 4).state_dict(), tmp_path / "m.pt")
    (tmp_path / "in.csv").write_text("sequence,step,a\n0,0,1\n", encoding="utf-8")
    with pytest.raises(SystemExit) as exc:
        main(["explain", "--state-dict", "m.pt", *argv, "--no-images", "--out", str(tmp_path / "o")])
    assert exc.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and message in errors[0], errors
    assert not (tmp_path / "o").exists()


def test_inputs_without_state_dict_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["explain", "--inputs", "x.csv", "--out", str(tmp_path / "o")])
    assert exc.value.code == 2
    assert "argument --inputs: needs --state-dict FILE" in capsys.readouterr().err
