"""The config in the URL: `ExplainConfig` <-> query parameters, so copying the address reproduces the view.

Only non-default fields are written. Reading never raises: every unknown key, unparsable, out-of-limit or
stale value (e.g. a device this machine lacks, a target the model cannot evaluate) falls back to its default
and yields a human-readable notice naming the field and what is allowed. Keys containing a dot (e.g.
``explorer.log``) belong to individual pages: the known ones (`PAGE_KEYS`) are left to their pages, any other
(``explorer.bogus``, ``foo.bar``) gets a notice like every unknown key.

Notices quote what the URL said, and a URL is anybody's text: each notice is a `Notice`, a str that keeps our own
words apart from the `Quote`s of URL text, so a page can show the quoted parts literally (never as Markdown).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass, fields
from typing import Any

from .config import CELLS, DTYPES, HEADS, ExplainConfig, Limits, available_devices
from .errors import ConfigError, TargetError

DEFAULT = ExplainConfig()
FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in fields(ExplainConfig))
INT_FIELDS = ("num_layers", "input_size", "hidden_size", "head_size", "seq_len", "batch_size", "seed")
CHOICE_FIELDS = {"cell": CELLS, "head": HEADS, "dtype": DTYPES}
SIZE_FIELDS_BY_RESET_ORDER = ("batch_size", "seq_len", "hidden_size", "num_layers")
"""When sizes are only invalid together (the state-size limit), reset them to defaults in this order."""
MAX_VALUE_CHARS = 600
PAGE_KEYS: frozenset[str] = frozenset({
    # The explorer's view controls (app_pages/explorer.py VIEW_PARAMS).
    "explorer.log", "explorer.k", "explorer.layer", "explorer.direction", "explorer.batch", "explorer.hm_log",
    # The flow page: compared cells, followed layer / direction, the sweep's lengths and scales.
    "flow.cells", "flow.layer", "flow.direction", "flow.T", "flow.scale",
    # The graph page's options (app_pages/graph.py OPTIONS).
    "graph.steps", "graph.ops", "graph.params",
    # The training page (app_pages/learn.py VIEW_PARAMS).
    "learn.task", "learn.cell", "learn.compare", "learn.T", "learn.H", "learn.layers", "learn.steps", "learn.batch",
    "learn.lr", "learn.seed", "learn.every", "learn.snapshot",
    # The devices page (app_pages/devices.py VIEW_PARAMS): the compared devices and the timed repeats.
    "devices.chosen", "devices.repeats",
    # The Your model page (app_pages/your_model.py VIEW_PARAMS): everything but the uploaded files.
    "model.module", "model.nonlinearity", "model.dtype", "model.input", "model.batch", "model.T", "model.seed",
    "model.target", "model.log", "model.layer", "model.direction", "model.item",
})
"""Every URL key a page owns (``<page>.<control>``): left to the pages. A page that adds a dotted key adds it here
(tests/test_hardening_urls.py checks that every page's URL keys are listed), or its key is noticed as unknown."""
_TRUE = {"true", "1", "yes", "on"}


class Quote(str):
    """Text a visitor supplied (a URL key or value), quoted in a `Notice`: pages show it literally."""


class Notice(str):
    """A notice about the URL: our own words (plain str parts) and the visitor's text they quote (`Quote` parts).

    As a str it is the whole sentence, each quote as a Python literal (``'1e309'``, truncated to 80 characters),
    so it reads, logs and compares as before. `parts` keeps the two kinds apart: a page renders the quotes in a
    Markdown-free form (ui.md_escape shows them as inline code), so no URL can put a link, an image, an icon
    shortcode or formatting into the page. Our own parts may still hold a core error message, which can echo
    the visitor's text too: pages escape them as well.
    """

    parts: tuple[str, ...]

    def __new__(cls, *parts: str) -> Notice:
        kept = tuple(Quote(_short(str(p))) if isinstance(p, Quote) else str(p) for p in parts)
        self = super().__new__(cls, "".join(repr(p) if isinstance(p, Quote) else p for p in kept))
        self.parts = kept
        return self

    def __reduce__(self) -> tuple:  # pickles (st.session_state, caches) keep the parts
        return (Notice, self.parts)

    @property
    def quotes(self) -> tuple[str, ...]:
        """The visitor's text this notice quotes (each truncated to 80 characters)."""
        return tuple(str(p) for p in self.parts if isinstance(p, Quote))
_FALSE = {"false", "0", "no", "off"}


def config_to_query(cfg: ExplainConfig) -> dict[str, str]:
    """The query parameters for `cfg`: only the fields that differ from the defaults, as strings."""
    query: dict[str, str] = {}
    for name in FIELD_NAMES:
        value = getattr(cfg, name)
        if value == getattr(DEFAULT, name):
            continue
        if isinstance(value, bool):
            query[name] = "true" if value else "false"
        elif isinstance(value, float):
            query[name] = repr(value)
        else:
            query[name] = str(value)
    return query


def config_from_query(
    params: Mapping[str, str | list[str]], *, limits: Limits | None = None, page_keys: Collection[str] = ()
) -> tuple[ExplainConfig, list[str]]:
    """Parse query parameters into a valid config plus notices for every value that fell back to its default.

    Never raises. `page_keys` lists extra keys a page owns (ignored silently, like the known dotted `PAGE_KEYS`).
    Each notice is a `Notice` (a str whose `parts` keep the quoted URL text apart).
    """
    notices: list[str] = []
    try:
        return _from_query(params, limits or Limits.from_env(), set(page_keys), notices), notices
    except Exception as err:  # a last resort: a broken URL must never break the page
        notices.append(Notice(f"The URL could not be read ({type(err).__name__}); using the default settings."))
        return DEFAULT, notices


def _from_query(params: Mapping[str, Any], limits: Limits, page_keys: set[str], notices: list[str]) -> ExplainConfig:
    values: dict[str, Any] = {}
    for key in sorted(params, key=str):
        raw = params[key]
        if isinstance(raw, list | tuple):
            raw = raw[-1] if raw else ""
        if not isinstance(key, str) or not isinstance(raw, str):
            notices.append(Notice("Ignored a URL parameter that is not text: ", Quote(str(key)[:40]), "."))
            continue
        if key in page_keys or key in PAGE_KEYS:
            continue
        if key not in FIELD_NAMES:
            notices.append(unknown_key_notice(key))
            continue
        try:
            value = _parse(key, raw, limits)
            _check_alone(key, value, limits)
        except (ConfigError, ValueError) as err:
            notices.append(Notice(f"URL parameter {key}=", Quote(raw), f" ignored: {err}. Using the default "
                                  f"{getattr(DEFAULT, key)!r}."))
            continue
        values[key] = value
    cfg = DEFAULT.replace(**values)
    cfg = _fix_combinations(cfg, limits, notices)
    return _fix_target(cfg, notices)


def _parse(name: str, raw: str, limits: Limits) -> Any:
    """The typed value of one field from its URL text; ValueError with a reason when it cannot be read."""
    if len(raw) > MAX_VALUE_CHARS:
        raise ValueError(f"the value is longer than {MAX_VALUE_CHARS} characters")
    text = raw.strip()
    if name in INT_FIELDS:
        if not text.lstrip("+-").isdigit() or not text.isascii() or len(text) > 12:
            raise ValueError(f"{name} must be a whole number {_int_range(name, limits)}")
        return int(text)
    if name == "bidirectional":
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ValueError("bidirectional must be true or false")
    if name == "weight_scale":
        try:
            number = float(text)
        except ValueError:
            raise ValueError(f"weight_scale must be a number > 0 and <= {limits.max_weight_scale:g}") from None
        if not math.isfinite(number):
            raise ValueError(f"weight_scale must be a finite number > 0 and <= {limits.max_weight_scale:g}")
        return number
    return raw if name == "target" else text


def _int_range(name: str, limits: Limits) -> str:
    """'between LOW and HIGH' for an integer field under these limits."""
    if name == "seed":
        return f"between 0 and {2**31 - 1}"
    return f"between 1 and {getattr(limits, 'max_' + name)}"


def _check_alone(name: str, value: Any, limits: Limits) -> None:
    """Validate one field against the limits, with every other field at its default (ConfigError if bad)."""
    if name == "cell":  # answer_gru conflicts with the default 2 layers; combinations are fixed later
        if value not in CELLS:
            raise ConfigError(f"cell must be one of {', '.join(CELLS)}")
        return
    if name in CHOICE_FIELDS and value not in CHOICE_FIELDS[name]:
        raise ConfigError(f"{name} must be one of {', '.join(CHOICE_FIELDS[name])}")
    devices = ("auto", *available_devices())
    if name == "device" and value not in devices:
        raise ConfigError(f"device {value!r} is not available on this machine; available: {', '.join(devices)}")
    if name == "target":
        if not value.strip():
            raise ConfigError("target must not be empty")
        return  # parsed (comments and control characters refused) against the final config in _fix_target
    DEFAULT.replace(**{name: value}).validate(limits)


def _fix_combinations(cfg: ExplainConfig, limits: Limits, notices: list[str]) -> ExplainConfig:
    """Resolve fields that are valid alone but not together (answer_gru shape, the state-size limit)."""
    if cfg.cell == "answer_gru" and (cfg.num_layers != 1 or cfg.bidirectional):
        notices.append(Notice("cell answer_gru (the seed answer's hand-written GRU) has exactly 1 layer and one "
                              "direction; using num_layers=1 and bidirectional=false instead of "
                              f"num_layers={cfg.num_layers}, "
                              f"bidirectional={str(cfg.bidirectional).lower()}."))
        cfg = cfg.replace(num_layers=1, bidirectional=False)
    for name in SIZE_FIELDS_BY_RESET_ORDER:
        try:
            cfg.validate(limits)
            return cfg
        except ConfigError as err:
            if getattr(cfg, name) == getattr(DEFAULT, name) or (name == "num_layers" and cfg.cell == "answer_gru"):
                continue
            notices.append(Notice(f"{err}. Using the default {name}={getattr(DEFAULT, name)} instead of "
                                  f"{getattr(cfg, name)}."))
            cfg = cfg.replace(**{name: getattr(DEFAULT, name)})
    try:
        cfg.validate(limits)
        return cfg
    except ConfigError as err:
        notices.append(Notice(f"{err}. Using the default settings."))
        return DEFAULT


def _fix_target(cfg: ExplainConfig, notices: list[str]) -> ExplainConfig:
    """Keep the target only if the core's parser accepts it for this config; else the default target."""
    from .explain import compile_target

    try:
        compile_target(cfg)
        return cfg
    except (TargetError, ConfigError) as err:
        notices.append(Notice("URL parameter target=", Quote(cfg.target), f" ignored: {err}. "
                              f"Using the default target {DEFAULT.target!r}."))
        return cfg.replace(target=DEFAULT.target)


def _short(text: str, limit: int = 80) -> str:
    """URL text cut to `limit` characters for notices."""
    return text if len(text) <= limit else text[:limit] + "…"


def unknown_key_notice(key: str) -> Notice:
    """The notice for a URL key nobody owns: the config's fields, or for a dotted key the keys of its page."""
    prefix = key.split(".", 1)[0] + "." if "." in key else ""
    same_page = sorted(k for k in PAGE_KEYS if prefix and k.startswith(prefix))
    known = ", ".join(same_page) if same_page else ", ".join(FIELD_NAMES)
    return Notice("Ignored unknown URL parameter ", Quote(key), f"; known: {known}.")


@dataclass(frozen=True)
class ViewParam:
    """One view control of a page in the URL: its key (with a dot, e.g. ``explorer.log``), type and default.

    `kind` is bool, int or str; ints must lie in [low, high], strings among `choices` (when given). A default of
    None means "the page decides" (e.g. the top layer): the key is then written whenever the page gives a value.
    """

    key: str
    kind: type
    default: Any = None
    low: int | None = None
    high: int | None = None
    choices: tuple[str, ...] = ()

    def parse(self, raw: str) -> Any:
        """The typed value of `raw`; ValueError with a reason when it is not one."""
        text = raw.strip()
        if len(text) > MAX_VALUE_CHARS:
            raise ValueError(f"the value is longer than {MAX_VALUE_CHARS} characters")
        if self.kind is bool:
            if text.lower() in _TRUE | _FALSE:
                return text.lower() in _TRUE
            raise ValueError("it must be true or false")
        if self.kind is int:
            low = -(10**9) if self.low is None else self.low
            high = 10**9 if self.high is None else self.high
            if not text.lstrip("+-").isdigit() or not text.isascii() or len(text) > 12 or not low <= int(text) <= high:
                raise ValueError(f"it must be a whole number between {low} and {high}")
            return int(text)
        if self.choices and text not in self.choices:
            raise ValueError(f"it must be one of {', '.join(self.choices)}")
        return text

    def text(self, value: Any) -> str:
        """`value` as URL text."""
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value)


def view_from_query(params: Mapping[str, str | list[str]], specs: Collection[ViewParam]
                    ) -> tuple[dict[str, Any], list[str]]:
    """The view values the URL gives for `specs` (by key; absent keys are left out) and a notice per bad value
    (it is left out: the page keeps its default). Never raises."""
    values: dict[str, Any] = {}
    notices: list[str] = []
    for spec in specs:
        raw = params.get(spec.key)
        if isinstance(raw, list | tuple):
            raw = raw[-1] if raw else None
        if raw is None:
            continue
        try:
            values[spec.key] = spec.parse(str(raw))
        except ValueError as err:
            default = "the page's default" if spec.default is None else repr(spec.default)
            notices.append(Notice(f"URL parameter {spec.key}=", Quote(str(raw)), f" ignored: {err}. Using {default}."))
    return values, notices


def view_to_query(values: Mapping[str, Any], specs: Collection[ViewParam]) -> dict[str, str]:
    """The URL text of each view value that differs from its spec's default (absent values are skipped)."""
    return {spec.key: spec.text(values[spec.key]) for spec in specs
            if spec.key in values and values[spec.key] is not None and values[spec.key] != spec.default}


__all__ = ["PAGE_KEYS", "Notice", "Quote", "ViewParam", "config_from_query", "config_to_query", "unknown_key_notice",
           "view_from_query", "view_to_query"]
