"""Command line: ``python -m gru_explainer explain [options] --out DIR`` (static export, no browser), and
``python -m gru_explainer train [options] --out DIR`` (`gru_explainer.train`: learning curves and gradient snapshots).

``explain --state-dict FILE [--inputs CSV] [--module PREFIX] --out DIR`` explains the user's own trained module
instead (`gru_explainer.state_dict`): its architecture comes from the file, the input is seeded random
(--batch-size, --seq-len, --seed) or the CSV, and the target (--target) is differentiated inside `watch`.

Exit codes: 0 written; 2 bad options, config or target (one message on stderr, no traceback);
1 the export failed for another reason (e.g. the folder is not writable, a missing renderer).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from .config import CELLS, DTYPES, ENGINES, HEADS, PRESETS, ExplainConfig, Limits, available_devices
from .errors import ConfigError, TargetError
from .state_dict import MAX_FILE_BYTES, MAX_UPLOAD_MB, RNN_NONLINEARITIES, StateDictError

DEFAULT = ExplainConfig()
LIMIT_MODES = ("hosted", "local")
MAX_SCALE = 8.0
"""The largest --scale (PNG pixel scale) accepted."""
_HEATMAP = (("heatmap_layer", "num_layers"), ("heatmap_direction", "num_directions"), ("heatmap_batch", "batch_size"))
"""Heatmap option -> the config size it indexes."""

# field -> (option type, help text without the default); choices come from config.py.
_FIELD_HELP: dict[str, str] = {
    "cell": "recurrent cell; answer_gru is the seed answer's hand-written GRU (1 layer, one direction)",
    "num_layers": "stacked recurrent layers",
    "input_size": "features per time step of x",
    "hidden_size": "hidden units per layer and direction",
    "bidirectional": "add a reverse direction (its h_t depends on later x)",
    "head": "none: y is the model output; linear: MyModel's Linear on the last step, named `out` in targets",
    "head_size": "output features of the linear head",
    "seq_len": "time steps T",
    "batch_size": "batch size B",
    "target": "scalar expression to differentiate, over y, h_n, c_n (LSTM) and out (linear head); "
              "e.g. 'y[:, -1].sum()', 'h_n[-1].pow(2).mean()', 'out[:, -1].sum()'",
    "device": "device to compute on",
    "dtype": "floating-point type",
    "seed": "seeds the weights and x = torch.rand(B, T, I)",
    "weight_scale": "multiplies PyTorch's default init range U(±1/√H): >1 tends to explode, <1 to vanish",
}
_CHOICES = {"cell": CELLS, "head": HEADS, "dtype": DTYPES}


def _limit_text(name: str, limits: Limits) -> str:
    if name == "seed":
        return f"0..{2**31 - 1}"
    if name == "weight_scale":
        return f"> 0 and <= {limits.max_weight_scale:g}"
    high = getattr(limits, f"max_{name}", None)
    return f"1..{high}" if high is not None else ""


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def _scale(text: str) -> float:
    """argparse type of --scale: a finite number > 0 and <= MAX_SCALE."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 0 < value <= MAX_SCALE):
        raise argparse.ArgumentTypeError(f"must be a number > 0 and <= {MAX_SCALE:g} (the PNG pixel scale), "
                                         f"got {text!r}")
    return value


def _index(text: str) -> int:
    """argparse type of the heatmap options: an integer >= 0 (the upper bound depends on the config)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return value


def _heatmap_error(args: argparse.Namespace, cfg: ExplainConfig) -> str | None:
    """The message for a heatmap option outside this (valid) config's sizes, naming the option; None when fine."""
    for name, size_name in _HEATMAP:
        value, size = getattr(args, name), int(getattr(cfg, size_name))
        if not 0 <= value < size:
            return (f"argument {_option(name)}: must be between 0 and {size - 1} because this config has "
                    f"{size_name} = {size}, got {value}")
    return None


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser: one `explain` subcommand whose options mirror `ExplainConfig`'s fields."""
    hosted, local = Limits(), Limits.local()
    parser = argparse.ArgumentParser(
        prog="python -m gru_explainer",
        description="GRU Gradient Explainer: where gradients go inside recurrent networks "
                    "(stacked outputs y vs hidden states h_t).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub = commands.add_parser(
        "explain",
        usage="%(prog)s --out DIR [--preset NAME | --state-dict FILE [--inputs CSV]] [--engine fused|twin] "
              "[config options] [output options]",
        help="compute one explanation and write CSV, JSON and every chart (PNG + SVG) to a folder",
        description="Compute where the gradient of a target goes and write report.csv (tidy frame), report.json "
                    "(config, target value, verdict, shapes, per-step norms), verdict.md and the explorer's charts "
                    "(gradient norm linear/log, unit heatmap, input gradient) as PNG and SVG.",
        epilog=(f"Size limits are the hosted demo's (state elements B×T×L×D×H <= {hosted.max_state_elements:,}) "
                f"unless --limits local (or GRU_EXPLAINER_LIMITS=local) raises them, e.g. hidden size <= "
                f"{local.max_hidden_size}, T <= {local.max_seq_len}, state elements <= "
                f"{local.max_state_elements:,}. Exit codes: 0 written, 2 invalid options/config/target, "
                "1 export failed."),
    )
    sub.set_defaults(command_parser=sub)
    sub.add_argument("--out", required=True, type=Path, metavar="DIR",
                     help="folder to write into (created if needed; files of the same names are overwritten)")
    sub.add_argument("--preset", choices=PRESETS,
                     help="start from one of the seed's models; explicit options below override its fields")
    sub.add_argument("--config", type=Path, metavar="JSON",
                     help="start from a config JSON (a report.json written by this command, or a plain dict of "
                          "fields); explicit options override it")
    sub.add_argument("--engine", choices=ENGINES, default="fused",
                     help="fused: fused module + adjoint recursion (fast); twin: unrolled twin + autograd "
                          "(independent check). Default: %(default)s")
    sub.add_argument("--limits", choices=LIMIT_MODES, default=None,
                     help="size limits: hosted (the demo's) or local (generous). "
                          "Default: GRU_EXPLAINER_LIMITS or hosted")
    own = sub.add_argument_group("your own model (instead of a generated one)")
    own.add_argument("--state-dict", type=Path, metavar="FILE", default=None,
                     help="a .pt/.pth file of torch.save(model.state_dict()) holding an nn.GRU / nn.LSTM / nn.RNN "
                          "(keys like weight_ih_l0, optionally prefixed: encoder.weight_ih_l0); read with "
                          f"torch.load(weights_only=True), at most {MAX_UPLOAD_MB} MB. The architecture comes from "
                          "the file: only --target, --dtype, --batch-size, --seq-len and --seed (random input) apply")
    own.add_argument("--inputs", type=Path, metavar="CSV", default=None,
                     help="input sequences for --state-dict: a header 'sequence,step,<input_size feature columns>' "
                          "and one row per (sequence, step), steps 0..T-1, the same T for every sequence. "
                          "Default: seeded standard-normal input (--batch-size, --seq-len, --seed)")
    own.add_argument("--module", metavar="PREFIX", default=None,
                     help="which recurrent module of --state-dict (its key prefix, e.g. encoder) when the file holds "
                          "several")
    own.add_argument("--nonlinearity", choices=RNN_NONLINEARITIES, default=None,
                     help="nn.RNN's nonlinearity (a state_dict does not store it). Default: tanh")
    group = sub.add_argument_group("config (ExplainConfig fields; defaults are ExplainConfig's, limits the hosted "
                                   "demo's)")
    devices = ", ".join(["auto", *available_devices()])
    for f in fields(ExplainConfig):
        name = f.name
        text = _FIELD_HELP.get(name, name)
        default = getattr(DEFAULT, name)
        limit = _limit_text(name, hosted)
        extra = f"; {limit}" if limit and name not in _CHOICES and name not in ("target", "device") else ""
        if name == "device":
            extra = f"; available here: {devices}"
        kwargs: dict[str, Any] = {"default": None, "dest": name}
        if name in _CHOICES:
            kwargs["choices"] = _CHOICES[name]
            kwargs["help"] = f"{text}. Choices: {', '.join(_CHOICES[name])}. Default: {default}"
        elif isinstance(default, bool):
            kwargs["action"] = argparse.BooleanOptionalAction
            kwargs["help"] = f"{text}. Default: {'on' if default else 'off'}"
        else:
            kwargs["type"] = type(default)
            kwargs["metavar"] = {int: "N", float: "X"}.get(type(default), "TEXT")
            kwargs["help"] = f"{text}{extra}. Default: {default!r}" if isinstance(default, str) else \
                f"{text}{extra}. Default: {default}"
        group.add_argument(_option(name), **kwargs)
    out = sub.add_argument_group("output")
    out.add_argument("--scale", type=_scale, default=2.0, metavar="X",
                     help=f"PNG pixel scale (> 0, <= {MAX_SCALE:g}). Default: %(default)s")
    out.add_argument("--heatmap-layer", type=_index, default=0, metavar="N",
                     help="layer of the unit heatmap (0..num_layers-1). Default: %(default)s")
    out.add_argument("--heatmap-direction", type=_index, default=0, metavar="N",
                     help="direction of the unit heatmap (0 forward, 1 reverse). Default: %(default)s")
    out.add_argument("--heatmap-batch", type=_index, default=0, metavar="N",
                     help="batch item of the unit heatmap (0..batch_size-1). Default: %(default)s")
    out.add_argument("--no-images", action="store_true",
                     help="write CSV, JSON and verdict only (no PNG/SVG; vl-convert-python is not needed)")
    out.add_argument("--quiet", "-q", action="store_true", help="print nothing on success")
    from .train import add_train_command  # `train`: gru_explainer/train.py

    add_train_command(commands)
    return parser


def _load_config_file(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise ConfigError(f"--config {path}: cannot read it ({err.strerror or err})") from err
    except json.JSONDecodeError as err:
        raise ConfigError(f"--config {path}: not valid JSON ({err})") from err
    if isinstance(data, dict) and isinstance(data.get("config"), dict):
        data = data["config"]
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: expected a JSON object of config fields")
    return data


def config_from_args(args: argparse.Namespace) -> ExplainConfig:
    """The config the options describe: preset or config file, then the explicit options on top (not validated)."""
    base = ExplainConfig.preset(args.preset) if args.preset else ExplainConfig()
    if args.config is not None:
        base = ExplainConfig.from_dict({**base.to_dict(), **_load_config_file(args.config)})
    changes = {f.name: getattr(args, f.name) for f in fields(ExplainConfig) if getattr(args, f.name) is not None}
    return base.replace(**changes)


def _option_hint(message: str) -> str:
    """' (option --hidden-size)' when the message is about one config field or heatmap option, else ''."""
    names = [f.name for f in fields(ExplainConfig)] + ["heatmap_layer", "heatmap_direction", "heatmap_batch"]
    found = [n for n in names if message.startswith(n + " must")]
    return f" (option {_option(found[0])})" if found else ""


_NOT_WITH_STATE_DICT = ("preset", "config", "cell", "num_layers", "input_size", "hidden_size", "bidirectional", "head",
                        "head_size", "weight_scale")
"""Options that describe a generated model: the architecture of --state-dict comes from the file instead."""


def _read_file(path: Path, option: str) -> bytes:
    """The bytes of a user's file, refusing a missing, unreadable or too large one (StateDictError)."""
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise StateDictError("too_large", f"{path}: {size:,} bytes is too large; at most {MAX_FILE_BYTES:,} "
                                 f"bytes ({MAX_UPLOAD_MB} MB) are accepted")
        return path.read_bytes()
    except OSError as err:
        raise StateDictError("not_torch", f"{path}: cannot read it ({err.strerror or err})") from None


def _state_dict_option_error(args: argparse.Namespace) -> str | None:
    """The message for options that do not go with --state-dict (or need it); None when they fit."""
    if args.state_dict is None:
        for name in ("inputs", "module", "nonlinearity"):
            if getattr(args, name) is not None:
                return f"argument {_option(name)}: needs --state-dict FILE"
        return None
    for name in _NOT_WITH_STATE_DICT:
        if getattr(args, name) is not None:
            return (f"argument {_option(name)}: not allowed with --state-dict (the architecture comes from the "
                    "file)")
    if args.engine != "fused":
        return "argument --engine: only the fused engine explains a --state-dict (through watch)"
    if args.device not in (None, "cpu"):
        return "argument --device: a --state-dict model runs on the CPU (--device cpu)"
    if args.inputs is not None:
        for name in ("batch_size", "seq_len", "seed"):
            if getattr(args, name) is not None:
                return f"argument {_option(name)}: not allowed with --inputs (the CSV gives the sequences)"
    return None


def _explain_state_dict(args: argparse.Namespace, explain_parser: argparse.ArgumentParser,
                        limits: Limits | None) -> int:
    """`explain --state-dict FILE`: the user's own module through watch, written like any report."""
    from .export import ExportError, write_report
    from .state_dict import (
        explain_state_dict,
        load_state_dict,
        normalise_prefix,
        pick_module,
        random_inputs,
        read_sequences,
    )

    message = _state_dict_option_error(args)
    if message is not None:
        explain_parser.error(message)
    option = "--state-dict"
    try:
        name = str(args.state_dict)
        state = load_state_dict(_read_file(args.state_dict, option), name)
        prefix = normalise_prefix(args.module) if args.module is not None else None
        spec = pick_module(state, prefix, name, limits)
        if args.inputs is not None:
            option = "--inputs"
            x = read_sequences(_read_file(args.inputs, option), spec.input_size, str(args.inputs), limits)
        else:
            x = random_inputs(spec, args.batch_size or DEFAULT.batch_size, args.seq_len or DEFAULT.seq_len,
                              DEFAULT.seed if args.seed is None else args.seed)
        option = "--state-dict"
        dtype = args.dtype or ("float64" if spec.dtype == "float64" else "float32")
        result = explain_state_dict(state, spec, x, args.target or DEFAULT.target, args.nonlinearity or "tanh",
                                    dtype, limits)
        message = _heatmap_error(args, result.config)
        if message is not None:
            explain_parser.error(message)
        fields = {"config": result.config.to_dict(), "target": result.config.target, "target_value": result.loss,
                  "verdict": result.verdict,
                  "model": {"file": args.state_dict.name, "prefix": spec.prefix, "cell": result.config.cell,
                            "num_layers": spec.num_layers, "input_size": spec.input_size,
                            "hidden_size": spec.hidden_size, "bidirectional": spec.bidirectional, "bias": spec.bias,
                            "num_parameters": spec.num_parameters, "file_dtype": spec.dtype,
                            "inputs": args.inputs.name if args.inputs is not None else "random"}}
        paths = write_report(result.report, args.out, scale=args.scale,
                             heatmap=(args.heatmap_layer, args.heatmap_direction, args.heatmap_batch),
                             images=not args.no_images, fields=fields)
    except StateDictError as err:
        hint = " with --module PREFIX" if err.kind == "several_modules" else ""
        explain_parser.error(f"argument {option}: {err}{hint}")
    except TargetError as err:
        explain_parser.error(f"invalid --target: {err}")
    except ConfigError as err:
        explain_parser.error(f"invalid config: {err}{_option_hint(str(err))}")
    except ExportError as err:
        print(f"{explain_parser.prog}: export failed: {err}", file=sys.stderr)
        return 1
    if not args.quiet:
        print(f"target {result.config.target} = {result.loss} (watch on {spec.label}, cpu); wrote {len(paths)} "
              f"files to {args.out}:")
        for path in paths:
            print(f"  {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 1 export failed, 2 bad input)."""
    from .export import ExportError, export_report

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "train":
        from .train import run_train_command

        return run_train_command(args)
    explain_parser: argparse.ArgumentParser = args.command_parser  # its error() prints the subcommand's usage
    limits = None
    if args.limits is not None:
        limits = Limits.local() if args.limits == "local" else Limits()
    if args.state_dict is not None or _state_dict_option_error(args) is not None:
        return _explain_state_dict(args, explain_parser, limits)
    try:
        cfg = config_from_args(args)
        cfg.validate(limits)
        message = _heatmap_error(args, cfg)
        if message is not None:
            explain_parser.error(message)
        paths = export_report(cfg, args.out, engine=args.engine, limits=limits, scale=args.scale,
                              heatmap=(args.heatmap_layer, args.heatmap_direction, args.heatmap_batch),
                              images=not args.no_images)
    except TargetError as err:
        explain_parser.error(f"invalid --target: {err}")
    except ConfigError as err:
        explain_parser.error(f"invalid config: {err}{_option_hint(str(err))}")
    except ExportError as err:
        print(f"{explain_parser.prog}: export failed: {err}", file=sys.stderr)
        return 1
    if not args.quiet:
        report_json = json.loads((Path(args.out) / "report.json").read_text(encoding="utf-8"))
        print(f"target {cfg.target} = {report_json['target_value']} ({report_json['engine']} engine, "
              f"{report_json['device']}); wrote {len(paths)} files to {args.out}:")
        for path in paths:
            print(f"  {path}")
    return 0


__all__ = ["build_parser", "config_from_args", "main"]
