"""The target language: the scalar, e.g. ``y[:, -1].sum()``, whose gradient `explain` computes.

Users type the target, so it is never run as Python. `parse_target` reads it with `ast` (parsing only: no eval,
exec or code compilation) and translates the syntax tree into a small tree of whitelisted nodes; everything else is
a `TargetError` that quotes the offending part and says what is allowed. The language:

- names ``y`` (alias ``output``), ``h_n``, ``c_n``, ``out``;
- subscripts of int literals (``-1``), slices of int literals with a positive step (``1:8:2``) and at most one
  ``...`` (torch accepts several, with surprising meaning; numpy refuses them, and so does this language);
- the methods ``sum(dim)``, ``mean(dim)`` (``dim`` optional, a positional int literal), ``abs()``, ``pow(k)``,
  ``square()`` and ``norm()``;
- ``+ - * /`` between tensors and numeric constants, ``tensor ** constant``, unary ``-`` and ``+``, parentheses.

Numeric constants are int or float literals, used as Python floats. Every constant, and every constant-only
sub-expression (computed at parse time in float arithmetic, never with Python big ints), must be a finite real
number: ``1e400``, ``10 ** 400`` and ``1 / 0`` are refused. Operations torch supports the same way (indexing,
reductions, broadcasting) follow torch's rules exactly, so ``Target.check`` accepts what torch would compute.
"""

from __future__ import annotations

import ast
import functools
import math
import operator
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import EllipsisType
from typing import Any

import torch

from .errors import TargetError

TARGET_NAMES = ("y", "h_n", "c_n", "out")
"""The tensors a target may read: outputs ``y``, final states ``h_n`` (and ``c_n`` for LSTMs), head output ``out``."""
NAME_ALIASES = {"output": "y"}
METHODS = ("sum", "mean", "abs", "pow", "square", "norm")
MAX_TARGET_CHARS = 500
MAX_TARGET_DEPTH = 50
"""Deepest syntax tree (and deepest bracket nesting) accepted; keeps parsing and evaluation recursion shallow."""

_NAMES_TEXT = "y (alias output), h_n, c_n, out"
_METHODS_TEXT = ", ".join(METHODS)
_INDEX_HINT = (
    "indices must be int literals (e.g. 0 or -1), slices of int literals with a positive step (e.g. 1:8:2) or ..."
)
_LANGUAGE_HINT = (
    f"a target combines the names {_NAMES_TEXT}, subscripts such as [:, -1], the methods {_METHODS_TEXT}, "
    "the operators + - * / and ** (with a constant exponent), and int or float constants"
)
_EXAMPLE = "y[:, -1].sum()"

Index = int | slice | EllipsisType


# --- The whitelisted tree ------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class _Name:
    name: str
    src: str


@dataclass(frozen=True, eq=False)
class _Const:
    value: float
    src: str


@dataclass(frozen=True, eq=False)
class _Index:
    base: _Node
    items: tuple[Index, ...]
    src: str


@dataclass(frozen=True, eq=False)
class _Method:
    base: _Node
    name: str
    arg: int | float | None
    src: str


@dataclass(frozen=True, eq=False)
class _Binary:
    op: str
    left: _Node
    right: _Node
    src: str


@dataclass(frozen=True, eq=False)
class _Neg:
    operand: _Node
    src: str


_Node = _Name | _Const | _Index | _Method | _Binary | _Neg

_BIN_OPS: dict[type[ast.operator], str] = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.Pow: "**"}
_OTHER_BIN_OPS: dict[type[ast.operator], str] = {
    ast.Mod: "%",
    ast.FloorDiv: "//",
    ast.MatMult: "@",
    ast.LShift: "<<",
    ast.RShift: ">>",
    ast.BitOr: "|",
    ast.BitAnd: "&",
    ast.BitXor: "^",
}
_APPLY: dict[str, Callable[[Any, Any], Any]] = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "/": operator.truediv,
    "**": operator.pow,
}
_KINDS: dict[type[ast.AST], str] = {
    ast.Lambda: "a lambda",
    ast.List: "a list",
    ast.Tuple: "a tuple",
    ast.Set: "a set",
    ast.Dict: "a dict",
    ast.ListComp: "a comprehension",
    ast.SetComp: "a comprehension",
    ast.DictComp: "a comprehension",
    ast.GeneratorExp: "a generator expression",
    ast.IfExp: "a conditional expression",
    ast.Compare: "a comparison",
    ast.BoolOp: "'and'/'or'",
    ast.JoinedStr: "an f-string",
    ast.FormattedValue: "an f-string",
    ast.NamedExpr: "an assignment expression (:=)",
    ast.Await: "'await'",
    ast.Yield: "'yield'",
    ast.YieldFrom: "'yield from'",
    ast.Starred: "a starred expression",
    ast.Slice: "a slice outside a subscript",
}


# --- Parsing -------------------------------------------------------------------------------------------------------


def parse_target(text: str) -> Target:
    """Parse and whitelist-check a target expression (no shapes needed); raises only TargetError.

    Targets are immutable: the last few texts' parses are kept (a page reruns the same target again and again)."""
    return _parse_cached(text) if isinstance(text, str) else _parse(text)


@functools.lru_cache(maxsize=128)
def _parse_cached(text: str) -> Target:
    return _parse(text)


def _parse(text: str) -> Target:
    if not isinstance(text, str):
        raise TargetError(f"the target must be a string such as {_EXAMPLE!r}, got {type(text).__name__}")
    if len(text) > MAX_TARGET_CHARS:
        raise TargetError(f"the target is {len(text)} characters long; at most {MAX_TARGET_CHARS} are allowed")
    if "#" in text:  # the parser would skip a comment, which could carry any text into a verdict or a shared URL
        raise TargetError("a target has no comments: remove the # and what follows it")
    if any(unicodedata.category(char) in ("Cc", "Cf") for char in text):
        raise TargetError("a target is one line of text without control or invisible format characters")
    source = text.strip()
    if not source:
        raise TargetError(f"the target is empty; write an expression such as {_EXAMPLE!r}")
    _check_bracket_depth(source)
    try:
        tree = ast.parse(source, mode="eval")
    except SyntaxError as e:
        where = f"column {e.offset}" if e.offset else "the end"
        if e.lineno and e.lineno > 1:
            where = f"line {e.lineno}, {where}"
        raise TargetError(f"syntax error at {where} in {source!r}: {e.msg}") from None
    except Exception as e:  # ValueError (huge int literal, bad characters), RecursionError, MemoryError, ...
        raise TargetError(f"cannot parse {source!r}: {e or type(e).__name__}") from None
    _check_tree_depth(tree)
    converter = _Converter(source)
    try:
        root = converter.expr(tree.body)
    except RecursionError:  # unreachable with MAX_TARGET_DEPTH, kept as a guard
        raise TargetError(f"the target {source!r} is nested too deeply") from None
    if isinstance(root, _Const) or not converter.names:
        raise TargetError(f"the target must use at least one of y, h_n, c_n, out; got {source!r}")
    return Target(text=text, names=frozenset(converter.names), _root=root)


def _check_bracket_depth(source: str) -> None:
    depth = deepest = 0
    for char in source:
        if char in "([{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in ")]}":
            depth -= 1
    if deepest > MAX_TARGET_DEPTH:
        raise TargetError(f"the target nests brackets {deepest} levels deep; at most {MAX_TARGET_DEPTH} are allowed")


def _check_tree_depth(tree: ast.AST) -> None:
    stack = [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_TARGET_DEPTH:
            raise TargetError(f"the target is nested too deeply; at most {MAX_TARGET_DEPTH} levels are allowed")
        stack.extend(
            (child, depth + 1) for child in ast.iter_child_nodes(node) if not isinstance(child, ast.expr_context)
        )


class _Converter:
    """Translates an `ast` expression into the whitelisted tree, folding constant-only arithmetic."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.names: set[str] = set()

    def seg(self, node: ast.AST) -> str:
        return ast.get_source_segment(self.source, node) or self.source

    def refuse(self, what: str, node: ast.AST, hint: str = _LANGUAGE_HINT) -> TargetError:
        return TargetError(f"{what} is not allowed in {self.seg(node)!r}; {hint}")

    def expr(self, node: ast.expr) -> _Node:
        src = self.seg(node)
        if isinstance(node, ast.Name):
            name = NAME_ALIASES.get(node.id, node.id)
            if name not in TARGET_NAMES:
                raise TargetError(f"unknown name {node.id!r} in {self.source!r}; allowed names: {_NAMES_TEXT}")
            self.names.add(name)
            return _Name(name, src)
        if isinstance(node, ast.Constant):
            return _Const(self.number(node), src)
        if isinstance(node, ast.UnaryOp):
            if not isinstance(node.op, ast.USub | ast.UAdd):
                symbol = {ast.Not: "not", ast.Invert: "~"}.get(type(node.op), type(node.op).__name__)
                raise self.refuse(f"the operator {symbol!r}", node, "only unary - and + are allowed")
            operand = self.expr(node.operand)
            if isinstance(node.op, ast.UAdd):
                return operand
            if isinstance(operand, _Const):
                return _Const(-operand.value, src)
            return _Neg(operand, src)
        if isinstance(node, ast.BinOp):
            return self.binary(node, src)
        if isinstance(node, ast.Subscript):
            return _Index(self.tensor(node.value, "subscripts"), self.indices(node), src)
        if isinstance(node, ast.Call):
            return self.call(node, src)
        if isinstance(node, ast.Attribute):
            if node.attr in METHODS:
                raise TargetError(f"the method {node.attr!r} must be called in {src!r}, e.g. {src}()")
            raise self.refuse(f"the attribute {node.attr!r}", node, f"only the methods {_METHODS_TEXT} are allowed")
        kind = _KINDS.get(type(node), type(node).__name__)
        raise self.refuse(kind, node)

    def tensor(self, node: ast.expr, what: str) -> _Node:
        """`expr`, refusing a constant: subscripts and methods apply to tensor expressions only."""
        value = self.expr(node)
        if isinstance(value, _Const):
            raise TargetError(f"{what} apply to tensor expressions, not to the constant {value.src!r}")
        return value

    def number(self, node: ast.Constant) -> float:
        value = node.value
        if isinstance(value, bool) or value is None or value is Ellipsis or not isinstance(value, int | float):
            kind = {bool: "the boolean", complex: "the complex number", str: "the string", bytes: "the bytes"}
            what = kind.get(type(value), "the constant")
            raise self.refuse(f"{what} {self.seg(node)}", node, "constants must be int or float literals")
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            raise TargetError(f"the number {self.seg(node)} is too large; constants must be finite")
        return number

    def binary(self, node: ast.BinOp, src: str) -> _Node:
        op = _BIN_OPS.get(type(node.op))
        if op is None:
            symbol = _OTHER_BIN_OPS.get(type(node.op), type(node.op).__name__)
            raise self.refuse(f"the operator {symbol!r}", node, "allowed operators: + - * / and ** (constant exponent)")
        left, right = self.expr(node.left), self.expr(node.right)
        if isinstance(left, _Const) and isinstance(right, _Const):
            return _Const(_fold(op, left.value, right.value, src), src)
        if op == "**" and not isinstance(right, _Const):
            raise TargetError(
                f"the exponent must be a numeric constant in {src!r}, got {right.src!r}; e.g. write (y ** 2).sum()"
            )
        return _Binary(op, left, right, src)

    def call(self, node: ast.Call, src: str) -> _Node:
        func = node.func
        if not isinstance(func, ast.Attribute):
            raise self.refuse(f"calling {self.seg(func)!r}", node, f"only the methods {_METHODS_TEXT} may be called")
        base = self.tensor(func.value, "methods")
        if func.attr not in METHODS:
            raise TargetError(f"method {func.attr!r} is not allowed in {src!r}; allowed methods: {_METHODS_TEXT}")
        if node.keywords:
            raise TargetError(
                f"keyword arguments are not allowed in {src!r}; pass arguments by position, e.g. y.sum(0)"
            )
        args = node.args
        if any(isinstance(arg, ast.Starred) for arg in args):
            raise self.refuse("a starred argument", node, "pass arguments by position")
        if func.attr in ("sum", "mean"):
            if len(args) > 1:
                raise TargetError(f"{func.attr}() takes at most one argument (dim) in {src!r}, got {len(args)}")
            dim = self.int_literal(args[0], node, "the dim", "dim must be an int literal, e.g. -1") if args else None
            return _Method(base, func.attr, dim, src)
        if func.attr == "pow":
            if len(args) != 1:
                raise TargetError(f"pow() takes exactly one argument (the exponent) in {src!r}, got {len(args)}")
            exponent = self.expr(args[0])
            if not isinstance(exponent, _Const):
                raise TargetError(f"the exponent must be a numeric constant in {src!r}, got {exponent.src!r}")
            return _Method(base, "pow", exponent.value, src)
        if args:
            raise TargetError(f"{func.attr}() takes no arguments in {src!r}, got {len(args)}")
        return _Method(base, func.attr, None, src)

    def int_literal(self, node: ast.expr, parent: ast.AST, what: str, hint: str) -> int:
        sign, inner = 1, node
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
            sign, inner = (-1 if isinstance(node.op, ast.USub) else 1), node.operand
        if isinstance(inner, ast.Constant) and isinstance(inner.value, int) and not isinstance(inner.value, bool):
            return sign * inner.value
        raise TargetError(f"{what} {self.seg(node)!r} is not allowed in {self.seg(parent)!r}; {hint}")

    def indices(self, node: ast.Subscript) -> tuple[Index, ...]:
        parts = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        items: list[Index] = []
        for part in parts:
            if isinstance(part, ast.Constant) and part.value is Ellipsis:
                items.append(Ellipsis)
            elif isinstance(part, ast.Slice):
                bounds = [
                    None if p is None else self.int_literal(p, node, "the slice bound", _INDEX_HINT)
                    for p in (part.lower, part.upper, part.step)
                ]
                if bounds[2] is not None and bounds[2] <= 0:
                    raise TargetError(
                        f"the slice step must be positive in {self.seg(node)!r}, got {bounds[2]} "
                        "(torch does not support zero or negative steps)"
                    )
                items.append(slice(*bounds))
            else:
                items.append(self.int_literal(part, node, "the index", _INDEX_HINT))
        if items.count(Ellipsis) > 1:
            raise TargetError(f"an index may contain at most one '...', in {self.seg(node)!r}")
        return tuple(items)


def _fold(op: str, left: float, right: float, src: str) -> float:
    """Constant-only arithmetic in Python floats (bounded time), refusing non-finite or complex results."""
    try:
        value = _APPLY[op](left, right)
    except OverflowError:
        raise TargetError(f"the constant {src!r} is too large; constants must be finite") from None
    except (ZeroDivisionError, ValueError) as e:
        raise TargetError(f"cannot compute the constant {src!r}: {e}") from None
    if isinstance(value, complex) or not math.isfinite(value):
        raise TargetError(f"the constant {src!r} is not a finite real number")
    return float(value)


# --- Shapes --------------------------------------------------------------------------------------------------------


def _broadcast(a: tuple[int, ...], b: tuple[int, ...], node: _Binary) -> tuple[int, ...]:
    out = []
    for i in range(1, max(len(a), len(b)) + 1):
        x = a[-i] if i <= len(a) else 1
        z = b[-i] if i <= len(b) else 1
        if x != z and x != 1 and z != 1:
            raise TargetError(
                f"incompatible shapes {list(a)} and {list(b)} in {node.src!r}: they cannot be broadcast together"
            )
        out.append(z if x == 1 else x)
    return tuple(reversed(out))


def _expand(items: tuple[Index, ...], shape: tuple[int, ...], node: _Index) -> list[int | slice]:
    """The index with `...` replaced by full slices; checks the count of indices and int ranges (like torch)."""
    count = sum(item is not Ellipsis for item in items)
    if count > len(shape):
        raise TargetError(
            f"too many indices in {node.src!r}: {count} for {node.base.src} with {len(shape)} dimension(s) "
            f"(shape {list(shape)})"
        )
    expanded: list[int | slice] = []
    for item in items:
        if item is Ellipsis:
            expanded.extend([slice(None)] * (len(shape) - count))
        else:
            expanded.append(item)
    for dim, item in enumerate(expanded):
        if isinstance(item, int) and not -shape[dim] <= item < shape[dim]:
            raise TargetError(
                f"index {item} is out of range for dimension {dim} of {node.base.src} (size {shape[dim]})"
            )
    return expanded


def _shape_of(node: _Node, shapes: Mapping[str, tuple[int, ...]]) -> tuple[int, ...]:
    if isinstance(node, _Name):
        return shapes[node.name]
    if isinstance(node, _Const):
        return ()
    if isinstance(node, _Neg):
        return _shape_of(node.operand, shapes)
    if isinstance(node, _Index):
        shape = _shape_of(node.base, shapes)
        expanded = _expand(node.items, shape, node)
        out = [len(range(*item.indices(shape[d]))) for d, item in enumerate(expanded) if isinstance(item, slice)]
        return (*out, *shape[len(expanded) :])
    if isinstance(node, _Method):
        shape = _shape_of(node.base, shapes)
        if node.name in ("abs", "pow", "square"):
            return shape
        if node.name == "norm" or node.arg is None:
            return ()
        dim, ndim = int(node.arg), len(shape)
        bound = max(ndim, 1)  # torch treats a 0-d tensor as 1-d for dim wrapping
        if not -bound <= dim < bound:
            raise TargetError(
                f"dim {dim} is out of range in {node.src!r}: {node.base.src} has {ndim} dimension(s), "
                f"so dim must be in [{-bound}, {bound - 1}]"
            )
        return () if ndim == 0 else shape[: dim % ndim] + shape[dim % ndim + 1 :]
    left, right = node.left, node.right
    if isinstance(left, _Const):
        return _shape_of(right, shapes)
    if isinstance(right, _Const):
        return _shape_of(left, shapes)
    return _broadcast(_shape_of(left, shapes), _shape_of(right, shapes), node)


# --- Evaluation ----------------------------------------------------------------------------------------------------


def _torch_index(node: _Index, shape: tuple[int, ...]) -> tuple[int | slice, ...]:
    """The expanded index with slices normalised to in-range bounds (same elements; torch-safe for huge ints)."""
    out: list[int | slice] = []
    for dim, item in enumerate(_expand(node.items, shape, node)):
        if isinstance(item, slice):
            start, stop, step = item.indices(shape[dim])
            out.append(slice(start, stop, min(step, max(shape[dim], 1))))
        else:
            out.append(item)
    return tuple(out)


def _run(node: _Node, env: Mapping[str, torch.Tensor], surrogate: bool) -> Any:
    """The value of `node`; with `surrogate`, every op is replaced by a monotone positive one (for read masks)."""
    if isinstance(node, _Name):
        return env[node.name]
    if isinstance(node, _Const):
        return node.value
    if isinstance(node, _Neg):
        value = _run(node.operand, env, surrogate)
        return value if surrogate else -value
    if isinstance(node, _Index):
        value = _run(node.base, env, surrogate)
        return value[_torch_index(node, tuple(value.shape))]
    if isinstance(node, _Method):
        value = _run(node.base, env, surrogate)
        name, arg = node.name, node.arg
        if surrogate:
            if name in ("abs", "pow", "square"):
                return value
            return value.sum() if name == "norm" or arg is None else value.sum(int(arg))
        if name in ("sum", "mean"):
            reduce = value.sum if name == "sum" else value.mean
            return reduce() if arg is None else reduce(int(arg))
        if name == "abs":
            return value.abs()
        if name == "pow":
            return value.pow(arg)
        if name == "square":
            return value.square()
        return value.norm()
    left, right = _run(node.left, env, surrogate), _run(node.right, env, surrogate)
    if not surrogate:
        return _APPLY[node.op](left, right)
    if isinstance(node.left, _Const):
        return right
    if isinstance(node.right, _Const):
        return left
    return left + right


# --- The parsed target ---------------------------------------------------------------------------------------------


# --- Rendering the tree back to code (for generated scripts) ------------------------------------------------

_BINARY_OPS = {"+", "-", "*", "/", "**"}


def _code(node: Any) -> str:
    """Python code for a whitelisted tree node; TargetError for anything outside the whitelist (defence in depth)."""
    if isinstance(node, _Name):
        name = NAME_ALIASES.get(node.name, node.name)
        if name not in TARGET_NAMES:
            raise TargetError(f"unknown name {name!r}")
        return name
    if isinstance(node, _Const):
        value = node.value
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise TargetError("constants must be finite numbers")
        return repr(float(value))
    if isinstance(node, _Neg):
        return f"(-{_code(node.operand)})"
    if isinstance(node, _Index):
        return f"{_code(node.base)}[{', '.join(_index_code(item) for item in node.items)}]"
    if isinstance(node, _Method):
        if node.name not in METHODS:
            raise TargetError(f"unknown method {node.name!r}")
        arg = node.arg
        if arg is None:
            return f"{_code(node.base)}.{node.name}()"
        if node.name in ("sum", "mean"):
            return f"{_code(node.base)}.{node.name}({_int_code(arg)})"
        if node.name == "pow" and not isinstance(arg, bool) and isinstance(arg, int | float) and math.isfinite(arg):
            return f"{_code(node.base)}.pow({float(arg)!r})"
        raise TargetError(f"unexpected argument for {node.name!r}")
    if isinstance(node, _Binary):
        if node.op not in _BINARY_OPS:
            raise TargetError(f"unknown operator {node.op!r}")
        return f"({_code(node.left)} {node.op} {_code(node.right)})"
    raise TargetError(f"cannot render a {type(node).__name__} node")


def _int_code(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TargetError(f"expected an int literal, got {value!r}")
    return str(int(value))


def _index_code(item: Any) -> str:
    if item is Ellipsis:
        return "..."
    if isinstance(item, slice):
        parts = ["" if part is None else _int_code(part) for part in (item.start, item.stop, item.step)]
        return ":".join(parts) if parts[2] else ":".join(parts[:2])
    return _int_code(item)



@dataclass(frozen=True)
class Target:
    """A parsed target: its original `text`, the canonical `names` it reads, and its whitelisted tree."""

    text: str
    names: frozenset[str]
    _root: _Node = field(repr=False, compare=False)

    def to_code(self) -> str:
        """Canonical Python code for this target, re-emitted from the whitelisted tree (never the user's text)."""
        return _code(self._root)

    def check(self, shapes: Mapping[str, tuple[int, ...]]) -> None:
        """Infer the result's shape by shape arithmetic alone (allocates nothing); TargetError unless it is 0-d."""
        shape = _shape_of(self._root, self._shapes(shapes))
        if shape != ():
            raise TargetError(
                f"the target must be a scalar (0-d); got shape {list(shape)}: reduce it, e.g. with .sum() or .mean()"
            )

    def evaluate(self, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The target's differentiable value (a 0-d tensor) for these tensors; checks their shapes first."""
        if not isinstance(tensors, Mapping):
            raise TargetError(f"tensors must be a mapping from name to tensor, got {type(tensors).__name__}")
        for name in self.names:
            if name in tensors and not isinstance(tensors[name], torch.Tensor):
                raise TargetError(f"{name} must be a torch.Tensor, got {type(tensors[name]).__name__}")
        available = {k: tuple(v.shape) for k, v in tensors.items() if k in TARGET_NAMES and isinstance(v, torch.Tensor)}
        self.check(available)
        try:
            result = _run(self._root, tensors, surrogate=False)
        except Exception as e:  # e.g. integer tensors that cannot be averaged
            raise TargetError(f"cannot evaluate {self.text!r}: {e}") from None
        if not isinstance(result, torch.Tensor) or result.dim() != 0:  # guarded by check(); kept as an invariant
            raise TargetError(f"the target {self.text!r} did not evaluate to a 0-d tensor")
        return result

    def read_masks(self, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
        """For each name used, a bool tensor of its shape: True where the target reads that element.

        Structural, not numeric (``y[:, -1].sum() * 0`` still reads ``y[:, -1]``): the target is re-run on float64
        ones with every op replaced by a monotone positive surrogate (mean, norm -> sum; abs, pow, square, unary
        minus, products and quotients with constants -> identity; tensor-tensor ops -> a + b), so the gradient is a
        positive count wherever an element is read and exactly zero elsewhere. Allocates float64 tensors of these
        shapes.
        """
        checked = self._shapes(shapes)
        self.check(checked)
        order = [name for name in TARGET_NAMES if name in self.names]
        try:
            with torch.inference_mode(False), torch.enable_grad():
                leaves = {n: torch.ones(checked[n], dtype=torch.float64, requires_grad=True) for n in order}
                result = _run(self._root, leaves, surrogate=True)
                grads = torch.autograd.grad(result.sum(), [leaves[n] for n in order], allow_unused=True)
        except Exception as e:
            raise TargetError(f"cannot compute the read masks of {self.text!r}: {e}") from None
        return {
            n: (g > 0) if g is not None else torch.zeros(checked[n], dtype=torch.bool)
            for n, g in zip(order, grads, strict=True)
        }

    def _shapes(self, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
        """The shapes of the names used, validated as tuples of non-negative ints."""
        if not isinstance(shapes, Mapping):
            raise TargetError(f"shapes must be a mapping from name to shape, got {type(shapes).__name__}")
        checked: dict[str, tuple[int, ...]] = {}
        for name in TARGET_NAMES:
            if name not in self.names:
                continue
            if name not in shapes:
                available = ", ".join(n for n in TARGET_NAMES if n in shapes) or "none"
                raise TargetError(f"name {name!r} is not available for this model; available: {available}")
            shape = shapes[name]
            if not isinstance(shape, tuple | list) or not all(
                isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape
            ):
                raise TargetError(f"the shape of {name} must be a tuple of non-negative ints, got {shape!r}")
            checked[name] = tuple(shape)
        return checked
