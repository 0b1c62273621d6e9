"""Explain a user's own trained model from its `state_dict` file: load it safely, infer the recurrent architecture,
read input sequences from a CSV, and run the user's target through `watch`.

    from gru_explainer.state_dict import explain_state_dict, load_state_dict, random_inputs, recurrent_modules
    state = load_state_dict(data, "model.pt")          # bytes of a torch.save(model.state_dict(), ...) file
    spec = recurrent_modules(state)["encoder."]        # RecurrentSpec: cell, layers, sizes, directions, bias
    result = explain_state_dict(state, spec, random_inputs(spec, batch=2, steps=10, seed=0), "y[:, -1].sum()")
    result.report, result.verdict                      # the watched call's GradientReport and verdict

Safety: files are only ever read with ``torch.load(..., weights_only=True)`` (tensors and plain containers; a pickle
that would import or call anything else is refused by torch). When torch refuses a file, the reason is told from a
static scan of the pickle's opcodes (`pickletools.genops`, which parses and never runs anything). Every refusal is
a `StateDictError` (a ValueError) whose `kind` is one of `ERROR_KINDS` and whose message names the file and what
is allowed.

CSV of input sequences (`read_sequences`): a header row, then one row per (sequence, step): a ``sequence`` column
(any label: rows with the same label form one sequence, in order of first appearance), a ``step`` column (integers
0..T-1, each exactly once per sequence, rows in any order) and exactly `input_size` numeric feature columns (any
names, in file order). Every sequence has the same T; every value is a finite number.
"""

from __future__ import annotations

import csv
import io
import math
import pickletools
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass

import pandas as pd
import torch
from torch import Tensor, nn

from .config import CELL_LABELS, DTYPES, ExplainConfig, Limits
from .errors import ConfigError, TargetError
from .report import GradientReport
from .target import parse_target

MAX_UPLOAD_MB = 32
"""The largest file accepted, in MB (MiB); `.streamlit/config.toml`'s server.maxUploadSize is the same number."""
MAX_FILE_BYTES = MAX_UPLOAD_MB * 1024 * 1024
MAX_FILE_ELEMENTS = 8 * 1024 * 1024
"""The most tensor elements (parameters and buffers, all modules together) a state_dict file may hold."""
ERROR_KINDS = ("empty", "too_large", "not_torch", "truncated", "code", "not_state_dict", "no_recurrent",
               "impossible_shapes", "unsupported", "several_modules", "bad_csv")
RNN_NONLINEARITIES = ("tanh", "relu")
"""nn.RNN's nonlinearity: not stored in a state_dict (the weights have the same shapes), so the user chooses."""
SEQUENCE_COLUMN, STEP_COLUMN = "sequence", "step"
_GATES = {1: "rnn", 3: "gru", 4: "lstm"}
"""Rows of weight_hh per hidden unit -> cell: nn.RNN 1, nn.GRU 3 (r, z, n), nn.LSTM 4 (i, f, g, o)."""
_KEY = re.compile(r"^(?P<prefix>(?:.*\.)?)(?P<kind>weight_ih|weight_hh|bias_ih|bias_hh|weight_hr)_l(?P<layer>\d+)"
                  r"(?P<reverse>_reverse)?$")
_FALLBACK_SAFE = re.compile(r"^(collections\.OrderedDict|_codecs\.encode|torch\._utils\._rebuild_\w+|torch\.\w+Storage|"
                            r"torch\.(float|bfloat|int|uint|bool|complex)\w*|torch\.Size|torch\.Tensor)$")
"""Globals a plain state_dict pickle names, when torch's own weights-only allowlist cannot be read."""


class StateDictError(ValueError):
    """A state_dict file or CSV cannot be used; `kind` (one of ERROR_KINDS) says why, the message names the file."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind

    def __reduce__(self) -> tuple:
        """Pickle as (kind, message), e.g. through a cache."""
        return (type(self), (self.kind, str(self)))


# --- Loading -------------------------------------------------------------------------------------------------------


def _pickle_globals(data: bytes) -> tuple[list[str], bool]:
    """The globals the pickles in `data` name (module.name), by parsing opcodes only (a legacy torch.save file is
    several pickles in a row, then raw bytes); and whether the first pickle parsed up to its STOP."""
    names: list[str] = []
    strings: list[str] = []
    stream = io.BytesIO(data)
    complete = False
    while stream.tell() < len(data):
        try:
            for op, arg, _ in pickletools.genops(stream):
                if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING",
                               "BINSTRING", "STRING"):
                    strings.append(str(arg))
                elif op.name in ("GLOBAL", "INST"):
                    names.append(str(arg).replace(" ", "."))
                elif op.name == "STACK_GLOBAL":
                    names.append(".".join(strings[-2:]) if len(strings) >= 2 else "<a computed name>")
        except Exception:  # ValueError / struct errors: the data ends before STOP, or raw tensor bytes follow
            break
        complete = True
    return names, complete


def _allowed_globals() -> set[str]:
    """The globals torch.load(weights_only=True) accepts by default (its allowlist), or an empty set if unreadable."""
    try:
        from torch import _weights_only_unpickler

        return set(_weights_only_unpickler._get_allowed_globals())
    except Exception:  # a private helper: fall back to the pattern
        return set()


def _unsafe(names: list[str]) -> list[str]:
    """The named globals a weights-only load does not allow (in order, without repeats)."""
    allowed = _allowed_globals()
    names = [n.replace("__builtin__.", "builtins.", 1) if n.startswith("__builtin__.") else n for n in names]
    found = [n for n in names if n not in allowed and not _FALLBACK_SAFE.match(n)]
    return list(dict.fromkeys(found))


def _pickle_of(data: bytes, name: str) -> bytes:
    """The main pickle of a torch.save file: data.pkl inside the zip archive, or the bytes themselves (legacy)."""
    if not data.startswith(b"PK\x03\x04"):
        return data
    member = None
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        member = next((m for m in archive.namelist() if m.endswith("data.pkl")), None)
        if member is not None:
            return archive.read(member)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as err:
        raise StateDictError("truncated", f"{name}: the file is truncated or damaged: it starts like a PyTorch zip "
                             f"archive but cannot be read as one ({err}); upload the complete file again") from None
    raise StateDictError("not_torch", f"{name}: a zip archive, but not a PyTorch file (it has no data.pkl); "
                         "upload a file written by torch.save(model.state_dict(), 'model.pt')")


def _classify_failure(data: bytes, name: str, err: Exception) -> StateDictError:
    """Why torch.load(weights_only=True) refused `data`, told from a static scan of its pickle."""
    pickle = _pickle_of(data, name)  # raises for a damaged zip archive
    names, complete = _pickle_globals(pickle)
    unsafe = _unsafe(names)
    if unsafe:
        shown = ", ".join(unsafe[:3]) + (f" and {len(unsafe) - 3} more" if len(unsafe) > 3 else "")
        whole = any(n.startswith("torch.nn.") or n.startswith("__main__.") for n in unsafe)
        hint = (" It holds a whole pickled model object; save its weights instead: "
                "torch.save(model.state_dict(), 'model.pt').") if whole else \
            " Only tensors in plain dicts are accepted: torch.save(model.state_dict(), 'model.pt')."
        return StateDictError("code", f"{name}: refused, nothing was run: this pickle would import and call {shown}, "
                              "so loading it could run code; torch.load(weights_only=True) does not allow it."
                              + hint)
    if not complete and not (data.startswith(b"PK\x03\x04") or data[:1] == b"\x80"):
        return StateDictError("not_torch", f"{name}: not a PyTorch file: it is neither a torch.save zip archive "
                              "nor a pickle; upload a .pt/.pth file written by torch.save(model.state_dict(), ...)")
    if not complete:
        return StateDictError("truncated", f"{name}: the file is truncated or damaged: its pickle ends before "
                              "its STOP mark; upload the complete file again")
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return StateDictError("truncated", f"{name}: the file is truncated or damaged: it starts like a torch.save file "
                          f"but its data cannot be read ({first[:160]}); upload the complete file again")


def load_state_dict(data: bytes, name: str = "the file", max_bytes: int = MAX_FILE_BYTES,
                    max_elements: int = MAX_FILE_ELEMENTS) -> dict[str, Tensor]:
    """Load a state_dict from file bytes with torch.load(weights_only=True), refusing anything else (StateDictError)."""
    if not isinstance(data, bytes | bytearray):
        raise StateDictError("not_torch", f"{name}: expected the file's bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise StateDictError("empty", f"{name}: the file is empty (0 bytes); upload a .pt/.pth state_dict")
    if len(data) > max_bytes:
        raise StateDictError("too_large", f"{name}: {len(data):,} bytes is too large; at most {max_bytes:,} bytes "
                             f"({max_bytes / 1024**2:g} MB) are accepted")
    try:
        state = torch.load(io.BytesIO(bytes(data)), map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError, RuntimeError (zip), EOFError, KeyError, ...: refused, nothing ran
        raise _classify_failure(bytes(data), name, err) from None
    return _check_state(state, name, max_elements)


def _check_state(state: object, name: str, max_elements: int) -> dict[str, Tensor]:
    """The loaded object as {key: tensor}, or a StateDictError saying what it is instead."""
    example = "torch.save(model.state_dict(), 'model.pt')"
    if isinstance(state, Tensor):
        raise StateDictError("not_state_dict", f"{name}: not a state dict: it holds a single tensor of shape "
                             f"{list(state.shape)}; save {example}")
    if not isinstance(state, Mapping):
        raise StateDictError("not_state_dict", f"{name}: not a state dict: it holds a {type(state).__name__}; a "
                             f"state dict maps parameter names to tensors ({example})")
    if not state:
        raise StateDictError("not_state_dict", f"{name}: not a state dict: the dict is empty")
    bad_keys = [k for k in state if not isinstance(k, str)]
    if bad_keys:
        raise StateDictError("not_state_dict", f"{name}: not a state dict: its keys must be parameter names "
                             f"(strings), found {bad_keys[0]!r}")
    nested = [k for k, v in state.items() if isinstance(v, Mapping)]
    others = [k for k, v in state.items() if not isinstance(v, Tensor) and k not in nested]
    if nested or others:
        if nested:
            raise StateDictError("not_state_dict", f"{name}: not a state dict but a checkpoint with the entries "
                                 f"{', '.join(repr(k) for k in list(state)[:6])}; save the model's part alone, e.g. "
                                 f"torch.save(checkpoint[{nested[0]!r}], 'model.pt')")
        raise StateDictError("not_state_dict", f"{name}: not a state dict: the value of {others[0]!r} is a "
                             f"{type(state[others[0]]).__name__}, not a tensor ({example})")
    elements = sum(int(t.numel()) for t in state.values())
    if elements > max_elements:
        raise StateDictError("too_large", f"{name}: {elements:,} parameters (tensor elements) are too many; at most "
                             f"{max_elements:,} are accepted")
    return dict(state)


# --- Architecture inference ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RecurrentSpec:
    """One recurrent module found in a state_dict: its key prefix and the architecture its shapes imply."""

    prefix: str  # "" for the module itself, else e.g. "encoder."
    cell: str  # "gru", "lstm" or "rnn" (nn.RNN: tanh or relu cannot be told from the weights)
    num_layers: int
    input_size: int
    hidden_size: int
    bidirectional: bool
    bias: bool
    num_parameters: int
    dtype: str  # the file's dtype of these tensors, e.g. "float32"

    @property
    def num_directions(self) -> int:
        """2 when bidirectional, else 1."""
        return 2 if self.bidirectional else 1

    @property
    def label(self) -> str:
        """A short description, e.g. "encoder. — GRU, 2 layers, input 3, hidden 32"."""
        cell = {"gru": "GRU", "lstm": "LSTM", "rnn": "RNN"}[self.cell]
        extra = (", bidirectional" if self.bidirectional else "") + ("" if self.bias else ", no bias")
        return (f"{self.prefix or '(the model itself)'} — {cell}, {self.num_layers} layer(s), input "
                f"{self.input_size}, hidden {self.hidden_size}{extra}")

    def param_names(self) -> list[str]:
        """The module's own parameter names (without the prefix), as nn.RNNBase names them."""
        kinds = ("weight_ih", "weight_hh", "bias_ih", "bias_hh") if self.bias else ("weight_ih", "weight_hh")
        dirs = ("", "_reverse") if self.bidirectional else ("",)
        return [f"{k}_l{layer}{d}" for layer in range(self.num_layers) for d in dirs for k in kinds]

    def cell_name(self, nonlinearity: str = "tanh") -> str:
        """The ExplainConfig cell: gru, lstm, rnn_tanh or rnn_relu."""
        if self.cell == "rnn":
            _check_nonlinearity(nonlinearity)
            return f"rnn_{nonlinearity}"
        return self.cell

    def rows(self, nonlinearity: str = "tanh") -> list[tuple[str, str]]:
        """(property, value) rows describing the architecture, for a table."""
        cell = CELL_LABELS[self.cell_name(nonlinearity)]
        if self.cell == "rnn":
            cell += " (nonlinearity chosen by you: a state_dict does not store it)"
        return [("key prefix", self.prefix or "(none: the file is the module itself)"), ("cell", cell),
                ("layers", str(self.num_layers)), ("input size", str(self.input_size)),
                ("hidden size", str(self.hidden_size)), ("bidirectional", "yes" if self.bidirectional else "no"),
                ("bias", "yes" if self.bias else "no"), ("parameters", f"{self.num_parameters:,}"),
                ("dtype in the file", self.dtype)]


def _check_nonlinearity(nonlinearity: str) -> None:
    if nonlinearity not in RNN_NONLINEARITIES:
        raise ConfigError(f"nonlinearity must be one of {', '.join(RNN_NONLINEARITIES)}; got {nonlinearity!r}")


def recurrent_prefixes(state: Mapping[str, Tensor]) -> list[str]:
    """The key prefixes of the recurrent modules in `state` (keys like 'encoder.weight_ih_l0'), in key order."""
    found = [m.group("prefix") for m in map(_KEY.match, state) if m is not None]
    return list(dict.fromkeys(found))


def infer_spec(state: Mapping[str, Tensor], prefix: str = "", name: str = "the file",
               limits: Limits | None = None) -> RecurrentSpec:
    """The architecture of the recurrent module under `prefix`, from its keys and shapes (StateDictError if none)."""
    limits = limits or Limits.from_env()
    where = f"{name}: the recurrent module {prefix[:-1]!r}" if prefix else f"{name}: the recurrent module"
    entries: dict[tuple[int, int], dict[str, Tensor]] = {}
    for key, tensor in state.items():
        match = _KEY.match(key)
        if match is None or match.group("prefix") != prefix:
            continue
        slot = (int(match.group("layer")), 1 if match.group("reverse") else 0)
        entries.setdefault(slot, {})[match.group("kind")] = tensor
    if not entries:
        raise StateDictError("no_recurrent", f"{name}: no recurrent module has the key prefix {prefix!r}")

    def impossible(text: str) -> StateDictError:
        return StateDictError("impossible_shapes", f"{where} has impossible shapes: {text}")

    if any("weight_hr" in kinds for kinds in entries.values()):
        raise StateDictError("unsupported", f"{where} is an LSTM with projections (weight_hr_l0: proj_size > 0), "
                             "which watch() does not support; only LSTMs with proj_size=0 can be explained")
    layers = sorted({layer for layer, _ in entries})
    if layers != list(range(len(layers))):
        missing = sorted(set(range(layers[-1] + 1)) - set(layers))
        raise impossible(f"layer(s) {', '.join(map(str, missing))} missing (found layers "
                         f"{', '.join(map(str, layers))}; keys must be numbered _l0, _l1, ... without gaps)")
    num_layers = len(layers)
    bidirectional = any(d == 1 for _, d in entries)
    dirs = (0, 1) if bidirectional else (0,)
    for layer in layers:
        for d in dirs:
            if (layer, d) not in entries:
                raise impossible(f"layer {layer} has no {'_reverse' if d else 'forward'} weights but other layers "
                                 "do (a bidirectional module has both directions in every layer)")
    kinds_seen = {frozenset(k) for k in entries.values()}
    for kinds in entries.values():
        for needed in ("weight_ih", "weight_hh"):
            if needed not in kinds:
                raise impossible(f"{needed} is missing for a layer that has {', '.join(sorted(kinds))}")
        if ("bias_ih" in kinds) != ("bias_hh" in kinds):
            raise impossible("bias_ih and bias_hh must both be present (bias=True) or both absent (bias=False)")
    if len(kinds_seen) > 1:
        raise impossible("some layers have biases and others do not (bias is one setting for the whole module)")
    bias = "bias_ih" in next(iter(entries.values()))
    for (layer, d), kinds in sorted(entries.items()):
        for kind, tensor in kinds.items():
            key = f"{prefix}{kind}_l{layer}{'_reverse' if d else ''}"
            if not isinstance(tensor, Tensor) or not tensor.is_floating_point():
                raise impossible(f"{key} must be a floating-point tensor, got {getattr(tensor, 'dtype', tensor)}")
            want = 2 if kind.startswith("weight") else 1
            if tensor.dim() != want:
                raise impossible(f"{key} has shape {list(tensor.shape)}; a {kind} is {want}-D")
    hh0 = entries[(0, 0)]["weight_hh"]
    rows, hidden = int(hh0.shape[0]), int(hh0.shape[1])
    if hidden < 1 or rows % hidden or rows // hidden not in _GATES:
        raise impossible(f"{prefix}weight_hh_l0 has shape {list(hh0.shape)}; it must be [G*H, H] with G = 1 "
                         "(nn.RNN), 3 (nn.GRU) or 4 (nn.LSTM)")
    gates = rows // hidden
    input_size = int(entries[(0, 0)]["weight_ih"].shape[1])
    for (layer, d), kinds in sorted(entries.items()):
        suffix = f"_l{layer}{'_reverse' if d else ''}"
        expected_in = input_size if layer == 0 else len(dirs) * hidden
        expected = {"weight_ih": [rows, expected_in], "weight_hh": [rows, hidden], "bias_ih": [rows],
                    "bias_hh": [rows]}
        for kind, tensor in kinds.items():
            if list(tensor.shape) != expected[kind]:
                why = f" (layer {layer}'s input is {len(dirs)} × hidden {hidden})" if kind == "weight_ih" and layer \
                    else ""
                raise impossible(f"{prefix}{kind}{suffix} has shape {list(tensor.shape)}, expected "
                                 f"{expected[kind]} for a {_GATES[gates].upper()} with hidden size {hidden} and "
                                 f"input size {input_size}{why}")
    if input_size < 1:
        raise impossible(f"{prefix}weight_ih_l0 has shape {list(entries[(0, 0)]['weight_ih'].shape)}: input size 0")
    for field_name, value, high in (("layers", num_layers, limits.max_num_layers),
                                    ("input size", input_size, limits.max_input_size),
                                    ("hidden size", hidden, limits.max_hidden_size)):
        if value > high:
            raise StateDictError("too_large", f"{where} has {field_name} {value}; at most {high} are allowed here "
                                 "(for a local run raise the limits: GRU_EXPLAINER_LIMITS=local)")
    tensors = [t for kinds in entries.values() for t in kinds.values()]
    dtype = torch.float64 if any(t.dtype == torch.float64 for t in tensors) else tensors[0].dtype
    return RecurrentSpec(prefix=prefix, cell=_GATES[gates], num_layers=num_layers, input_size=input_size,
                         hidden_size=hidden, bidirectional=bidirectional, bias=bias,
                         num_parameters=sum(int(t.numel()) for t in tensors), dtype=str(dtype).removeprefix("torch."))


def recurrent_modules(state: Mapping[str, Tensor], name: str = "the file",
                      limits: Limits | None = None) -> dict[str, RecurrentSpec | StateDictError]:
    """Every recurrent module in `state` by key prefix: its spec, or the StateDictError that explains why not."""
    prefixes = recurrent_prefixes(state)
    if not prefixes:
        keys = list(state)
        shown = ", ".join(repr(k) for k in keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")
        raise StateDictError("no_recurrent", f"{name}: no nn.GRU, nn.LSTM or nn.RNN in this state dict: no key "
                             f"looks like weight_ih_l0 / weight_hh_l0 (optionally prefixed, e.g. "
                             f"encoder.weight_ih_l0); its keys: {shown}")
    found: dict[str, RecurrentSpec | StateDictError] = {}
    for prefix in prefixes:
        try:
            found[prefix] = infer_spec(state, prefix, name, limits)
        except StateDictError as err:
            found[prefix] = err
    return found


def pick_module(state: Mapping[str, Tensor], prefix: str | None = None, name: str = "the file",
                limits: Limits | None = None) -> RecurrentSpec:
    """The one recurrent module to explain: the only one, or the one under `prefix` (StateDictError otherwise)."""
    found = recurrent_modules(state, name, limits)
    if prefix is None:
        if len(found) > 1:
            listed = ", ".join(repr(p[:-1]) if p else "'' (the model itself)" for p in found)
            raise StateDictError("several_modules", f"{name}: holds {len(found)} recurrent modules ({listed}); pick "
                                 "one by its key prefix")
        prefix = next(iter(found))
    if prefix not in found:
        listed = ", ".join(repr(p[:-1]) if p else "''" for p in found)
        raise StateDictError("several_modules", f"{name}: no recurrent module has the prefix {prefix!r}; "
                             f"its recurrent modules: {listed}")
    spec = found[prefix]
    if isinstance(spec, StateDictError):
        raise spec
    return spec


def normalise_prefix(text: str) -> str:
    """A user's module name ('encoder' or 'encoder.') as a key prefix ('encoder.'); '' stays ''."""
    text = text.strip()
    return text if not text or text.endswith(".") else text + "."


def build_module(state: Mapping[str, Tensor], spec: RecurrentSpec, nonlinearity: str = "tanh",
                 dtype: str = "float32") -> nn.RNNBase:
    """The fused module with the file's weights (CPU, batch_first=True, eval mode, in `dtype`)."""
    if dtype not in DTYPES:
        raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}; got {dtype!r}")
    kwargs = dict(num_layers=spec.num_layers, bias=spec.bias, batch_first=True, bidirectional=spec.bidirectional,
                  dtype=torch.float64 if dtype == "float64" else torch.float32)
    if spec.cell == "rnn":
        _check_nonlinearity(nonlinearity)
        module: nn.RNNBase = nn.RNN(spec.input_size, spec.hidden_size, nonlinearity=nonlinearity, **kwargs)
    else:
        module = (nn.GRU if spec.cell == "gru" else nn.LSTM)(spec.input_size, spec.hidden_size, **kwargs)
    module.load_state_dict({n: state[spec.prefix + n] for n in spec.param_names()}, strict=True)
    return module.eval()


# --- Inputs ----------------------------------------------------------------------------------------------------------


def random_inputs(spec: RecurrentSpec, batch: int, steps: int, seed: int) -> Tensor:
    """Seeded standard-normal inputs [batch, steps, input_size] in float64 (drawn from one torch.Generator)."""
    return torch.randn((batch, steps, spec.input_size), generator=torch.Generator().manual_seed(seed),
                       dtype=torch.float64)


def read_sequences(data: bytes, input_size: int, name: str = "the CSV", limits: Limits | None = None,
                   max_bytes: int = MAX_FILE_BYTES) -> Tensor:
    """Input sequences [B, T, input_size] (float64) from a CSV in the module's documented format (StateDictError)."""
    limits = limits or Limits.from_env()

    def bad(text: str) -> StateDictError:
        return StateDictError("bad_csv", f"{name}: {text}")

    if not isinstance(data, bytes | bytearray) or not data.strip():
        raise bad("the file is empty; expected a header row 'sequence,step,<feature columns>' and one row per "
                  "(sequence, step)")
    if len(data) > max_bytes:
        raise bad(f"{len(data):,} bytes is too large; at most {max_bytes:,} bytes are accepted")
    try:
        text = bytes(data).decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise bad(f"not UTF-8 text ({err.reason} at byte {err.start}); save the CSV as UTF-8") from None
    header = [c.strip() for c in next(csv.reader(io.StringIO(text.lstrip("\r\n").splitlines()[0])), [])]
    if len(set(header)) != len(header):
        raise bad(f"column names must be unique, got {header[:10]}")
    try:
        frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, csv.Error, ValueError) as err:
        raise bad(f"not a readable CSV ({str(err).strip().splitlines()[0][:200]})") from None
    columns = [str(c).strip() for c in frame.columns]
    frame.columns = columns
    for needed in (SEQUENCE_COLUMN, STEP_COLUMN):
        if needed not in columns:
            raise bad(f"no {needed!r} column; the header must be 'sequence,step,' followed by {input_size} feature "
                      f"column(s), got {columns[:8]}")
    features = [c for c in columns if c not in (SEQUENCE_COLUMN, STEP_COLUMN)]
    if len(features) != input_size:
        raise bad(f"{len(features)} feature column(s) ({', '.join(features[:8]) or 'none'}); this module's input "
                  f"size is {input_size}, so exactly {input_size} are needed besides 'sequence' and 'step'")
    if frame.empty:
        raise bad("no data rows after the header")
    values = frame[features].apply(lambda col: pd.to_numeric(col.str.strip(), errors="coerce"))
    finite = values.map(lambda v: isinstance(v, int | float) and math.isfinite(v))
    if not finite.to_numpy().all():
        row, col = next((r, c) for r in range(len(frame)) for c in range(len(features)) if not finite.iat[r, c])
        raise bad(f"row {row + 2}, column {features[col]!r}: {frame[features[col]].iat[row]!r} is not a finite "
                  "number (every feature value must be one)")
    steps = pd.to_numeric(frame[STEP_COLUMN].str.strip(), errors="coerce")
    integral = steps.map(lambda v: isinstance(v, int | float) and math.isfinite(v) and float(v).is_integer()
                         and v >= 0)
    if not integral.all():
        row = int((~integral).to_numpy().nonzero()[0][0])
        raise bad(f"row {row + 2}, column 'step': {frame[STEP_COLUMN].iat[row]!r} is not an integer >= 0")
    labels = frame[SEQUENCE_COLUMN].str.strip()
    if (labels == "").any():
        row = int((labels == "").to_numpy().nonzero()[0][0])
        raise bad(f"row {row + 2}, column 'sequence' is empty; every row names its sequence")
    order = list(dict.fromkeys(labels))
    steps = steps.astype(int)
    duplicated = pd.DataFrame({"s": labels, "t": steps}).duplicated()
    if duplicated.any():
        row = int(duplicated.to_numpy().nonzero()[0][0])
        raise bad(f"row {row + 2}: sequence {labels.iat[row]!r} has step {steps.iat[row]} twice")
    lengths = {label: int((labels == label).sum()) for label in order}
    length = lengths[order[0]]
    for label in order:
        if lengths[label] != length:
            raise bad(f"sequence {label!r} has {lengths[label]} steps but sequence {order[0]!r} has {length}; every "
                      "sequence needs the same number of steps")
        if int(steps[labels == label].max()) != length - 1:
            raise bad(f"sequence {label!r} has steps {sorted(steps[labels == label].tolist())[:10]}...; its steps "
                      f"must be 0..{length - 1}, each once")
    if len(order) > limits.max_batch_size:
        raise bad(f"{len(order)} sequences; at most {limits.max_batch_size} (the batch size limit) are allowed")
    if length > limits.max_seq_len:
        raise bad(f"{length} steps per sequence; at most {limits.max_seq_len} are allowed")
    x = torch.zeros(len(order), length, input_size, dtype=torch.float64)
    index = {label: i for i, label in enumerate(order)}
    b = torch.tensor([index[v] for v in labels], dtype=torch.long)
    x[b, torch.tensor(steps.to_numpy(), dtype=torch.long)] = torch.tensor(values.to_numpy(dtype=float),
                                                                           dtype=torch.float64)
    return x


def sequences_csv(x: Tensor) -> str:
    """The CSV text of inputs [B, T, I] in `read_sequences`' format (sequence, step, x0 ... x{I-1})."""
    batch, steps, size = x.shape
    rows = [",".join([SEQUENCE_COLUMN, STEP_COLUMN, *(f"x{i}" for i in range(size))])]
    for b in range(batch):
        for t in range(steps):
            rows.append(",".join([str(b), str(t), *(repr(float(v)) for v in x[b, t])]))
    return "\n".join(rows) + "\n"


# --- The explanation -------------------------------------------------------------------------------------------------


@dataclass
class ModelExplanation:
    """A watched call of the user's module on given inputs under a target: report, verdict and the loss value."""

    spec: RecurrentSpec
    config: ExplainConfig
    report: GradientReport
    verdict: str
    loss: float


def explain_config(spec: RecurrentSpec, batch: int, steps: int, target: str, nonlinearity: str = "tanh",
                   dtype: str = "float32") -> ExplainConfig:
    """The ExplainConfig describing this module, input size and target (for limits, target checks and snippets)."""
    return ExplainConfig(cell=spec.cell_name(nonlinearity), num_layers=spec.num_layers, input_size=spec.input_size,
                         hidden_size=spec.hidden_size, bidirectional=spec.bidirectional, head="none",
                         seq_len=steps, batch_size=batch, target=target, device="cpu", dtype=dtype)


def explain_state_dict(state: Mapping[str, Tensor], spec: RecurrentSpec, inputs: Tensor, target: str,
                       nonlinearity: str = "tanh", dtype: str = "float32",
                       limits: Limits | None = None) -> ModelExplanation:
    """Run the module on `inputs` [B, T, I] inside `watch`, differentiate `target` (y, h_n, c_n) and explain the call.

    Raises ConfigError / TargetError (sizes beyond the limits, a bad target) before running anything.
    """
    from .explain import compile_target
    from .watch import watch

    if inputs.dim() != 3 or inputs.shape[-1] != spec.input_size:
        raise ConfigError(f"inputs must have shape [batch, steps, {spec.input_size}], got {list(inputs.shape)}")
    cfg = explain_config(spec, int(inputs.shape[0]), int(inputs.shape[1]), target, nonlinearity, dtype)
    cfg.validate(limits)
    available = ("y", "h_n", "c_n") if spec.cell == "lstm" else ("y", "h_n")
    unknown = sorted(parse_target(target).names - set(available))
    if unknown:
        raise TargetError(f"{unknown[0]} is not an output of your {spec.cell.upper()}; a target reads "
                          f"{', '.join(available)}" + (" (c_n exists for an LSTM only)" if "c_n" in unknown else ""))
    parsed = compile_target(cfg)  # shapes checked, must be a scalar
    module = build_module(state, spec, nonlinearity, dtype)
    x = inputs.to(cfg.torch_dtype).clone().requires_grad_(True)
    with torch.enable_grad(), watch(module) as rec:
        y, finals = module(x)
        named = {"y": y, "h_n": finals[0], "c_n": finals[1]} if spec.cell == "lstm" else {"y": y, "h_n": finals}
        loss = parsed.evaluate(named)
        if not loss.requires_grad:
            raise TargetError(f"the target {target!r} does not depend on the module's outputs")
        loss.backward()
    call = rec.calls[0]
    return ModelExplanation(spec=spec, config=cfg, report=call.report, verdict=call.verdict(),
                            loss=float(loss.detach()))


def watch_snippet(spec: RecurrentSpec, cfg: ExplainConfig, file_name: str, *, csv_name: str | None = None,
                  seed: int = 0, nonlinearity: str = "tanh") -> str:
    """A script that redoes this explanation with `gx.watch` on the user's file (every value emitted with repr)."""
    from .explain import compile_target

    loss_code = compile_target(cfg).to_code()  # re-emitted from the whitelisted tree, never the user's text
    cls = {"gru": "nn.GRU", "lstm": "nn.LSTM", "rnn": "nn.RNN"}[spec.cell]
    extra = f", nonlinearity={nonlinearity!r}" if spec.cell == "rnn" else ""
    dtype = "torch.float64" if cfg.dtype == "float64" else "torch.float32"
    outputs = "y, (h_n, c_n)" if spec.cell == "lstm" else "y, h_n"
    lines = [
        f'"""Per-step gradients of {loss_code} through your {spec.cell.upper()} (by GRU Gradient Explainer)."""',
        "import torch",
        "from torch import nn",
        "",
        "import gru_explainer as gx",
        "",
        f"state = torch.load({file_name!r}, map_location='cpu', weights_only=True)",
        f"prefix = {spec.prefix!r}  # the module's key prefix in the state dict",
        f"module = {cls}({spec.input_size}, {spec.hidden_size}, num_layers={spec.num_layers}, bias={spec.bias}, "
        f"batch_first=True, bidirectional={spec.bidirectional}{extra}, dtype={dtype})",
        "module.load_state_dict({name: state[prefix + name] for name in module.state_dict()})",
        "module.eval()",
    ]
    if csv_name is not None:
        lines += [
            "from gru_explainer.state_dict import read_sequences  # one row per (sequence, step)",
            "",
            f"with open({csv_name!r}, 'rb') as f:",
            f"    x = read_sequences(f.read(), {spec.input_size}).to({dtype})",
        ]
    else:
        lines += [
            f"gen = torch.Generator().manual_seed({int(seed)})",
            f"x = torch.randn(({cfg.batch_size}, {cfg.seq_len}, {spec.input_size}), generator=gen, "
            f"dtype=torch.float64).to({dtype})",
        ]
    lines += [
        "x.requires_grad_()",
        "with gx.watch(module) as rec:",
        f"    {outputs} = module(x)",
        f"    loss = {loss_code}",
        "    loss.backward()",
        "call = rec.calls[0]",
        "print(call.verdict())",
        "print('dL/dh_t norm per step (last layer, forward):', call.hidden_grad[-1, 0].norm(dim=(0, 2)).tolist())",
    ]
    return "\n".join(lines) + "\n"


def example_state_dict() -> bytes:
    """A small example file: a classifier whose `encoder` is a 2-layer GRU (input 3, hidden 16), seed 0."""
    gen = torch.Generator().manual_seed(0)
    encoder = nn.GRU(3, 16, num_layers=2, batch_first=True)
    head = nn.Linear(16, 4)
    state: dict[str, Tensor] = {}
    for prefix, module in (("encoder.", encoder), ("fc.", head)):
        for key, tensor in module.state_dict().items():
            state[prefix + key] = (torch.rand(tensor.shape, generator=gen, dtype=torch.float64) * 0.5 - 0.25).float()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


__all__ = ["ERROR_KINDS", "MAX_FILE_BYTES", "MAX_FILE_ELEMENTS", "MAX_UPLOAD_MB", "RNN_NONLINEARITIES",
           "ModelExplanation", "RecurrentSpec", "StateDictError", "build_module", "example_state_dict",
           "explain_config", "explain_state_dict", "infer_spec", "load_state_dict", "normalise_prefix", "pick_module",
           "random_inputs", "read_sequences", "recurrent_modules", "recurrent_prefixes", "sequences_csv",
           "watch_snippet"]
