"""The target language: safe parsing, torch-exact evaluation, shape checks without allocation, read masks."""

from __future__ import annotations

import ast
import builtins
import contextlib
import math
import operator
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from gru_explainer import target as target_module
from gru_explainer.errors import TargetError
from gru_explainer.target import MAX_TARGET_CHARS, TARGET_NAMES, Target, parse_target

SHAPES = {"y": (2, 10, 32), "h_n": (2, 2, 32), "c_n": (2, 2, 32), "out": (2, 5, 1)}


def _tensors(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {name: torch.randn(shape, generator=gen, dtype=torch.float64) for name, shape in shapes.items()}


@contextlib.contextmanager
def _no_code_execution() -> Iterator[list[int]]:
    """Make eval/exec raise and record compile calls (ast.parse uses compile with PyCF_ONLY_AST, which is fine)."""
    real_compile = builtins.compile
    flags_seen: list[int] = []

    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the target language must never eval or exec code")

    def compile_ast_only(source: Any, filename: Any, mode: str, flags: int = 0, *args: Any, **kwargs: Any) -> Any:
        flags_seen.append(flags)
        if not flags & ast.PyCF_ONLY_AST:
            raise AssertionError("the target language must never compile to code")
        return real_compile(source, filename, mode, flags, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(builtins, "eval", forbidden)
        mp.setattr(builtins, "exec", forbidden)
        mp.setattr(builtins, "compile", compile_ast_only)
        yield flags_seen


def _warm_up() -> None:
    """Run every op once, so lazy imports inside torch happen before eval/exec are patched."""
    t = parse_target("(y.abs().pow(2).square().norm() + y.mean(0).sum() - h_n ** 2 / 3).sum()")
    t.evaluate(_tensors(SHAPES))
    t.read_masks(SHAPES)


_warm_up()


# --- Evaluation matches torch --------------------------------------------------------------------------------------

EXAMPLES: list[tuple[str, Callable[[dict[str, torch.Tensor]], torch.Tensor]]] = [
    ("y[:, -1].sum()", lambda t: t["y"][:, -1].sum()),
    ("(y[0] - y[1]).pow(2).mean()", lambda t: (t["y"][0] - t["y"][1]).pow(2).mean()),
    ("output.abs()[:, 3].norm()", lambda t: t["y"].abs()[:, 3].norm()),
    ("-2.5 * h_n[-1].sum() / 4 + 1", lambda t: -2.5 * t["h_n"][-1].sum() / 4 + 1),
    ("y[..., 0].square().sum()", lambda t: t["y"][..., 0].square().sum()),
    ("y[:, 1:8:3].mean()", lambda t: t["y"][:, 1:8:3].mean()),
    ("y.sum(-1)[:, -1].sum()", lambda t: t["y"].sum(-1)[:, -1].sum()),
    ("(out ** 2).sum()", lambda t: (t["out"] ** 2).sum()),
    ("y[:, -1][0].sum()", lambda t: t["y"][:, -1][0].sum()),
    ("y[0, -1, :5].sum()", lambda t: t["y"][0, -1, :5].sum()),
    ("(y[:, -1] * h_n[-1]).sum()", lambda t: (t["y"][:, -1] * t["h_n"][-1]).sum()),
    ("(y[:, -1] / (h_n[-1].abs() + 1)).mean()", lambda t: (t["y"][:, -1] / (t["h_n"][-1].abs() + 1)).mean()),
    ("(1 - y).mean(0).mean()", lambda t: (1 - t["y"]).mean(0).mean()),
    ("y.sum() * 2 ** 3", lambda t: t["y"].sum() * 8.0),
    ("(y.abs() ** (1 / 2)).sum()", lambda t: (t["y"].abs() ** 0.5).sum()),
    ("+y[0, 0, 0] - -c_n[0, 0, 0]", lambda t: t["y"][0, 0, 0] + t["c_n"][0, 0, 0]),
    ("(y[0] + out[0, :, 0].sum()).norm()", lambda t: (t["y"][0] + t["out"][0, :, 0].sum()).norm()),
    ("y.sum()[...]", lambda t: t["y"].sum()[...]),
    ("y.sum().sum(0)", lambda t: t["y"].sum().sum(0)),
    ("y[:, 0:100].sum()", lambda t: t["y"].sum()),
    ("y[:, 0:100000000000000000000000:100000000000000000000].sum()", lambda t: t["y"][:, 0].sum()),
    ("(y[:, 5:2] + 1).sum()", lambda t: (t["y"][:, 5:2] + 1).sum()),
    ("(y[:, 5:2] + 1).mean()", lambda t: (t["y"][:, 5:2] + 1).mean()),
    ("out.pow(-1).abs().sum()", lambda t: t["out"].pow(-1.0).abs().sum()),
]


@pytest.mark.parametrize(("text", "direct"), EXAMPLES, ids=[text for text, _ in EXAMPLES])
def test_evaluate_matches_direct_torch(text: str, direct: Callable[[dict[str, torch.Tensor]], torch.Tensor]) -> None:
    tensors = _tensors(SHAPES)
    target = parse_target(text)
    target.check(SHAPES)
    value = target.evaluate(tensors)
    assert value.dim() == 0
    torch.testing.assert_close(value, torch.as_tensor(direct(tensors), dtype=torch.float64), equal_nan=True)


def test_evaluate_is_differentiable() -> None:
    tensors = {name: t.requires_grad_() for name, t in _tensors(SHAPES).items()}
    value = parse_target("(y[:, -1] ** 2).sum()").evaluate(tensors)
    (grad,) = torch.autograd.grad(value, [tensors["y"]])
    expected = torch.zeros(SHAPES["y"], dtype=torch.float64)
    expected[:, -1] = 2 * tensors["y"].detach()[:, -1]
    torch.testing.assert_close(grad, expected)


def test_names_are_canonical_and_text_is_kept() -> None:
    target = parse_target("  output[:, -1].sum() + h_n.mean() + y.sum() ")
    assert target.names == frozenset({"y", "h_n"})
    assert target.text == "  output[:, -1].sum() + h_n.mean() + y.sum() "
    assert set(TARGET_NAMES) == {"y", "h_n", "c_n", "out"}
    assert isinstance(target, Target)


def test_check_allocates_nothing_for_huge_shapes() -> None:
    huge = {"y": (10**9, 10**9, 10**9)}
    start = time.perf_counter()
    parse_target("y[:, -1].abs().sum(0).mean()").check(huge)
    assert time.perf_counter() - start < 1.0


# --- Read masks ----------------------------------------------------------------------------------------------------


def _mask(shape: tuple[int, ...], index: Any) -> torch.Tensor:
    mask = torch.zeros(shape, dtype=torch.bool)
    mask[index] = True
    return mask


@pytest.mark.parametrize(
    "text",
    ["y[:, -1].sum()", "y[:, -1].sum() * 0", "y[:, -1].sum() - y[:, -1].sum()", "(y[:, -1] * 0).pow(2).mean()"],
)
def test_read_masks_last_step(text: str) -> None:
    masks = parse_target(text).read_masks(SHAPES)
    assert set(masks) == {"y"}
    assert masks["y"].dtype == torch.bool
    assert torch.equal(masks["y"], _mask(SHAPES["y"], (slice(None), -1)))


def test_read_masks_several_names() -> None:
    masks = parse_target("y[0, 2:5, 1].sum() + h_n[1].mean()").read_masks(SHAPES)
    assert set(masks) == {"y", "h_n"}
    assert torch.equal(masks["y"], _mask(SHAPES["y"], (0, slice(2, 5), 1)))
    assert torch.equal(masks["h_n"], _mask(SHAPES["h_n"], 1))


def test_read_masks_through_reductions_and_broadcasting() -> None:
    masks = parse_target("(y.sum(-1)[:, -1] / out[:, 0, 0]).norm()").read_masks(SHAPES)
    assert torch.equal(masks["y"], _mask(SHAPES["y"], (slice(None), -1)))
    assert torch.equal(masks["out"], _mask(SHAPES["out"], (slice(None), 0, 0)))


def test_read_masks_empty_slice_reads_nothing() -> None:
    masks = parse_target("y[:, 5:2].sum() + h_n[0, 0, 0]").read_masks(SHAPES)
    assert not masks["y"].any()
    assert torch.equal(masks["h_n"], _mask(SHAPES["h_n"], (0, 0, 0)))


def test_read_masks_work_under_inference_mode() -> None:
    with torch.inference_mode():
        masks = parse_target("y[1].sum()").read_masks(SHAPES)
    assert torch.equal(masks["y"], _mask(SHAPES["y"], 1))


# --- Shape errors --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "shapes", "message"),
    [
        ("y[:, 10].sum()", SHAPES, "index 10 is out of range for dimension 1 of y (size 10)"),
        ("y[:, -11].sum()", SHAPES, "index -11 is out of range for dimension 1 of y (size 10)"),
        ("y.abs()[2].sum()", SHAPES, "index 2 is out of range for dimension 0 of y.abs() (size 2)"),
        ("c_n.sum()", {"y": (2, 10, 32), "h_n": (2, 2, 32)}, "name 'c_n' is not available for this model; "),
        ("c_n.sum()", {"y": (2, 10, 32), "h_n": (2, 2, 32)}, "available: y, h_n"),
        ("y[:, -1]", SHAPES, "the target must be a scalar (0-d); got shape [2, 32]: reduce it, e.g. with .sum()"),
        ("y.sum(0)", SHAPES, "got shape [10, 32]"),
        ("y.sum(3)", SHAPES, "dim 3 is out of range"),
        ("y.mean(-4)", SHAPES, "dim must be in [-3, 2]"),
        ("y.sum().sum(1)", SHAPES, "dim must be in [-1, 0]"),
        ("y[0, 0, 0, 0]", SHAPES, "too many indices"),
        ("y.sum()[0]", SHAPES, "too many indices"),
        ("y.sum()[:]", SHAPES, "too many indices"),
        ("(y + h_n).sum()", SHAPES, "incompatible shapes [2, 10, 32] and [2, 2, 32]"),
        ("(y[:, 5:2] + h_n).sum()", SHAPES, "incompatible shapes [2, 0, 32] and [2, 2, 32]"),
        ("(h_n - y[:, 5:2]).sum()", SHAPES, "incompatible shapes [2, 2, 32] and [2, 0, 32]"),
        ("y[0, 0, 0:1]", SHAPES, "got shape [1]"),
        ("y.sum()", {"y": (2, -1)}, "non-negative ints"),
        ("y.sum()", [("y", (2,))], "mapping"),
    ],
)
def test_check_errors(text: str, shapes: Any, message: str) -> None:
    target = parse_target(text)
    with pytest.raises(TargetError) as info:
        target.check(shapes)
    assert message in str(info.value)


def test_evaluate_and_read_masks_check_shapes_first() -> None:
    target = parse_target("y[:, 10].sum()")
    with pytest.raises(TargetError, match="out of range"):
        target.evaluate(_tensors(SHAPES))
    with pytest.raises(TargetError, match="out of range"):
        target.read_masks(SHAPES)
    with pytest.raises(TargetError, match="not available"):
        parse_target("c_n.sum()").evaluate({"y": torch.zeros(2)})


def test_evaluate_refuses_bad_tensors_with_target_error() -> None:
    with pytest.raises(TargetError, match="must be a torch.Tensor"):
        parse_target("y.sum()").evaluate({"y": [1.0, 2.0]})
    with pytest.raises(TargetError, match="cannot evaluate"):
        parse_target("y.mean()").evaluate({"y": torch.arange(3)})
    with pytest.raises(TargetError, match="mapping"):
        parse_target("y.mean()").evaluate(torch.zeros(3))  # type: ignore[arg-type]


# --- Refused inputs ------------------------------------------------------------------------------------------------

BAD_INPUTS = [
    ("__import__('os')", "calling '__import__' is not allowed"),
    ("y.__class__", "attribute '__class__' is not allowed"),
    ("y.grad.sum()", "attribute 'grad' is not allowed"),
    ("y.data.sum()", "attribute 'data' is not allowed"),
    ("y.sum", "must be called"),
    ("(lambda: 1)()", "calling 'lambda: 1' is not allowed"),
    ("[y][0]", "a list is not allowed"),
    ("(y, h_n)", "a tuple is not allowed"),
    ("{y}", "a set is not allowed"),
    ("y if y else y", "a conditional expression is not allowed"),
    ("y[y]", "the index 'y' is not allowed"),
    ("y[0.5]", "the index '0.5' is not allowed"),
    ("y[None]", "the index 'None' is not allowed"),
    ("y[None:3].sum()", "the slice bound 'None' is not allowed"),
    ("y[True].sum()", "the index 'True' is not allowed"),
    ("y[[0, 1]].sum()", "the index '[0, 1]' is not allowed"),
    ("y[1+1].sum()", "the index '1+1' is not allowed"),
    ("y.sum(dim=0)", "keyword arguments are not allowed"),
    ("y.sum(0, 1)", "at most one argument"),
    ("y.sum(0.5)", "the dim '0.5' is not allowed"),
    ("y.abs(1)", "abs() takes no arguments"),
    ("y.pow()", "pow() takes exactly one argument"),
    ("y.pow(y).sum()", "the exponent must be a numeric constant"),
    ("y.sum(*y)", "starred"),
    ("y.max()", "method 'max' is not allowed in 'y.max()'; allowed methods: sum, mean, abs, pow, square, norm"),
    ("2 ** y.sum()", "the exponent must be a numeric constant"),
    ("(y ** y).sum()", "the exponent must be a numeric constant"),
    ("10**10**10", "too large"),
    ("y.sum() * 10 ** 400", "too large"),
    ("y.sum() * 1e400", "too large"),
    ("y.sum() * (1e200 * 1e200)", "not a finite real number"),
    ("y.sum() * (1 / (1 - 1))", "division by zero"),
    ("y.sum() * (-8) ** 0.5", "not a finite real number"),
    ("1+2", "the target must use at least one of y, h_n, c_n, out"),
    ("2 ** 3", "the target must use at least one of y, h_n, c_n, out"),
    ('"a"', "the string"),
    ("y.sum() * 1j", "the complex number"),
    ("y.sum() * True", "the boolean"),
    ("y.sum() + None", "constants must be int or float literals"),
    ("(2).sum() + y.sum()", "methods apply to tensor expressions, not to the constant"),
    ("(2)[0] + y.sum()", "subscripts apply to tensor expressions"),
    ("y[:, ::-1].sum()", "the slice step must be positive"),
    ("y[:, ::0].sum()", "the slice step must be positive"),
    ("y[..., ...].sum()", "at most one '...'"),
    ("", "the target is empty"),
    ("   ", "the target is empty"),
    ("   \n ", "without control"),
    ("y.sum() # [Click](https://example.org)", "a target has no comments"),
    ("y.sum()\u200b", "invisible format characters"),
    ("y" * 600, "600 characters long; at most 500"),
    ("(" * 200 + "y" + ")" * 200, "200 levels deep"),
    ("-" * 100 + "y.sum()", "nested too deeply"),
    ("9" * 5000, "5000 characters long"),
    ("y.sum();y.sum()", "syntax error at column 8"),
    ("y := 1", "syntax error"),
    ("(y := 1)", "an assignment expression (:=) is not allowed"),
    ("y.sum() == 0", "a comparison is not allowed"),
    ("y.sum() and 1", "'and'/'or' is not allowed"),
    ("not y", "'not' is not allowed"),
    ("~y", "'~' is not allowed"),
    ("y.sum() % 2", "the operator '%' is not allowed"),
    ("y @ y", "the operator '@' is not allowed"),
    ("f'{y}'", "an f-string is not allowed"),
    ("y.sum(", "syntax error at column 6 in 'y.sum(': '(' was never closed"),
    ("y[:,", "syntax error"),
    ("x.sum()", "unknown name 'x' in 'x.sum()'; allowed names: y (alias output), h_n, c_n, out"),
    ("torch.ones(1).sum()", "unknown name 'torch'"),
    ("print(1)", "calling 'print' is not allowed"),
    ("y.sum()()", "calling 'y.sum()' is not allowed"),
    ("[x for x in y]", "a comprehension is not allowed"),
    ("y\x00", "without control"),
    ("y\n.sum()", "without control"),
]


@pytest.mark.parametrize(("text", "message"), BAD_INPUTS, ids=[repr(t[:40]) for t, _ in BAD_INPUTS])
def test_bad_inputs_raise_target_error_naming_the_problem(text: str, message: str) -> None:
    start = time.perf_counter()
    with pytest.raises(TargetError) as info:
        parse_target(text).check(SHAPES)  # most fail in parse_target; ((y)) parses and then fails as non-scalar
    assert message in str(info.value)
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize("value", [None, 5, b"y.sum()", ["y"], 1.5])
def test_non_string_targets_raise_target_error(value: Any) -> None:
    with pytest.raises(TargetError, match="must be a string"):
        parse_target(value)


def test_huge_int_literal_is_refused_even_beyond_the_length_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(target_module, "MAX_TARGET_CHARS", 100_000)
    with pytest.raises(TargetError):
        parse_target("9" * 5000 + " * y.sum()")
    with pytest.raises(TargetError):
        parse_target("y[" + "9" * 5000 + "].sum()")


def test_int_literal_index_beyond_float_range_is_only_out_of_range() -> None:
    target = parse_target("y[" + "9" * 400 + "].sum()")
    with pytest.raises(TargetError, match="out of range for dimension 0"):
        target.check(SHAPES)


def test_target_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        parse_target("x")


def test_module_never_names_eval_exec_or_compile() -> None:
    tree = ast.parse(Path(target_module.__file__).read_text())
    forbidden = {"eval", "exec", "compile", "__import__", "getattr", "setattr", "globals", "locals", "vars", "open"}
    used = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
    used |= {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    assert not used & forbidden


# --- Property tests ------------------------------------------------------------------------------------------------

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(st.text())
def test_random_text_parses_or_raises_target_error(text: str) -> None:
    with _no_code_execution() as flags, contextlib.suppress(TargetError):
        parse_target(text)
    assert all(flag & ast.PyCF_ONLY_AST for flag in flags)


TOKENS = st.sampled_from(
    ["y", "output", "h_n", "c_n", "out", "x", "[", "]", "(", ")", ":", ",", "...", ".", "sum", "mean", "abs",
     "pow", "square", "norm", "max", "__class__", "-", "+", "*", "/", "**", "%", "0", "1", "-1", "2.5", "1e400",
     " ", "==", "None", "lambda", "'s'", "10**10**10", "9" * 30]
)  # fmt: skip


@FAST
@given(st.lists(TOKENS, max_size=30).map("".join))
def test_token_soup_raises_only_target_error(text: str) -> None:
    with _no_code_execution():
        try:
            target = parse_target(text)
            target.check(SHAPES)
            value = target.evaluate(_tensors(SHAPES))
            masks = target.read_masks(SHAPES)
        except TargetError:
            return
    assert value.dim() == 0
    assert set(masks) == set(target.names)


class InvalidError(Exception):
    """The reference refuses the expression (torch error, or a rule of the target language)."""


Ref = Callable[[dict[str, torch.Tensor]], Any]
CANONICAL = {"y": "y", "output": "y", "h_n": "h_n", "c_n": "c_n", "out": "out"}


def _const_ref(value: float) -> Ref:
    return lambda env: value


def _name_ref(name: str) -> Ref:
    def ref(env: dict[str, torch.Tensor]) -> Any:
        if CANONICAL[name] not in env:
            raise InvalidError("name not available")
        return env[CANONICAL[name]]

    return ref


def _tensor(value: Any) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise InvalidError("methods and subscripts apply to tensors only")
    return value


def _finite(value: Any) -> Any:
    if isinstance(value, complex) or (isinstance(value, float) and not math.isfinite(value)):
        raise InvalidError("constants must be finite reals")
    return value


NAME_LEAF = st.sampled_from(list(CANONICAL)).map(lambda n: (n, _name_ref(n), True))
CONST_LEAF = st.sampled_from([0, 1, 2, 3, 0.5, 1.5, 0.25, 10]).map(lambda c: (repr(c), _const_ref(float(c)), False))
LEAVES = st.one_of(NAME_LEAF, NAME_LEAF, NAME_LEAF, CONST_LEAF)  # constants are not atomic: `2.sum()` is no syntax
INT = st.integers(-6, 6)


@st.composite
def _index_item(draw: st.DrawFn) -> tuple[str, Any]:
    kind = draw(st.sampled_from(["int", "slice", "ellipsis"]))
    if kind == "int":
        i = draw(INT)
        return str(i), i
    if kind == "ellipsis":
        return "...", Ellipsis
    start, stop = draw(st.none() | INT), draw(st.none() | INT)
    step = draw(st.sampled_from([None, None, 1, 2, 3, 0, -1]))
    text = ("" if start is None else str(start)) + ":" + ("" if stop is None else str(stop))
    if step is not None:
        text += f":{step}"
    return text, slice(start, stop, step)


def _paren(text: str, atomic: bool) -> str:
    return text if atomic else f"({text})"


def _extend(children: st.SearchStrategy[tuple[str, Ref, bool]]) -> st.SearchStrategy[tuple[str, Ref, bool]]:
    def subscript(base: tuple[str, Ref, bool], items: list[tuple[str, Any]]) -> tuple[str, Ref, bool]:
        text, ref, atomic = base
        index = tuple(value for _, value in items)

        def indexed(e: dict[str, torch.Tensor]) -> Any:
            if index.count(Ellipsis) > 1:  # torch accepts several; the language refuses them like numpy
                raise InvalidError("at most one ...")
            return _tensor(ref(e))[index]

        return f"{_paren(text, atomic)}[{', '.join(t for t, _ in items)}]", indexed, True

    def method(base: tuple[str, Ref, bool], name: str, dim: int | None, k: float) -> tuple[str, Ref, bool]:
        text, ref, atomic = base
        prefix = _paren(text, atomic)
        if name in ("sum", "mean") and dim is not None:
            return f"{prefix}.{name}({dim})", lambda e: getattr(_tensor(ref(e)), name)(dim), True
        if name == "pow":
            return f"{prefix}.pow({k!r})", lambda e: _tensor(ref(e)).pow(k), True
        return f"{prefix}.{name}()", lambda e: getattr(_tensor(ref(e)), name)(), True

    def binary(left: tuple[str, Ref, bool], op: str, right: tuple[str, Ref, bool]) -> tuple[str, Ref, bool]:
        apply = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv, "**": operator.pow}
        (lt, lref, la), (rt, rref, ra) = left, right

        def ref(e: dict[str, torch.Tensor]) -> Any:
            a, b = lref(e), rref(e)
            if op == "**" and isinstance(b, torch.Tensor):
                raise InvalidError("the exponent must be a constant")
            return _finite(apply[op](a, b))

        return f"{_paren(lt, la)} {op} {_paren(rt, ra)}", ref, False

    def unary(child: tuple[str, Ref, bool], sign: str) -> tuple[str, Ref, bool]:
        text, ref, atomic = child
        return f"{sign}{_paren(text, atomic)}", (lambda e: -ref(e)) if sign == "-" else ref, False

    return st.one_of(
        st.builds(subscript, children, st.lists(_index_item(), min_size=1, max_size=3)),
        st.builds(
            method,
            children,
            st.sampled_from(["sum", "mean", "abs", "pow", "square", "norm"]),
            st.none() | st.integers(-4, 3),
            st.sampled_from([2.0, 1.0, 0.5, 3.0, -1.0]),
        ),
        st.builds(binary, children, st.sampled_from(["+", "-", "*", "/", "**"]), children),
        st.builds(unary, children, st.sampled_from(["-", "+"])),
    )


def _reduce(expr: tuple[str, Ref, bool], how: str) -> tuple[str, Ref, bool]:
    """Often end in a full reduction, so that many generated targets are scalar and reach evaluation."""
    text, ref, atomic = expr
    if how == "":
        return expr
    return f"{_paren(text, atomic)}.{how}()", lambda e: getattr(_tensor(ref(e)), how)(), True


EXPRESSIONS = st.builds(_reduce, st.recursive(LEAVES, _extend, max_leaves=6), st.sampled_from(["", "sum", "mean"]))
SHAPE_SETS = st.sampled_from(
    [
        SHAPES,
        {"y": (2, 5, 4), "h_n": (3, 2, 4), "c_n": (4,), "out": (5, 1)},
        {"y": (1, 0, 3), "h_n": (1, 1, 3)},
        {"y": (2, 0, 3), "h_n": (2, 2, 3), "out": (0,)},
        {"y": (3,), "out": ()},
    ]
)


def _reference(ref: Ref, env: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """The expression evaluated directly in torch; None when torch or the language's rules refuse it."""
    try:
        value = ref(env)
    except Exception:
        return None
    if not isinstance(value, torch.Tensor) or value.dim() != 0:
        return None
    return value


@FAST
@given(EXPRESSIONS, SHAPE_SETS, st.integers(0, 2**16))
def test_grammar_expressions_agree_with_direct_torch(expr: tuple[str, Ref, bool], shapes: dict, seed: int) -> None:
    text, ref, _ = expr
    assume(len(text) <= MAX_TARGET_CHARS)
    tensors = _tensors(shapes, seed)
    expected = _reference(ref, tensors)
    refusal = value = masks = None
    with _no_code_execution():  # only library calls inside: torch's tensor repr itself uses eval
        try:
            target = parse_target(text)
            target.check(shapes)
        except TargetError as e:
            refusal = str(e)
        else:
            value = target.evaluate(tensors)
            masks = target.read_masks(shapes)
    if refusal is not None:
        assume("too deeply" not in refusal and "levels deep" not in refusal)
        assert expected is None, f"{text!r} refused ({refusal}) but torch computes {expected}"
        return
    assert expected is not None, f"{text!r} accepted but torch or the language rules refuse it"
    assert value is not None and masks is not None
    assert value.dim() == 0
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=0, equal_nan=True)
    assert set(masks) == set(target.names)
    # Every element the value actually depends on (non-zero finite gradient) is marked as read.
    leaves = {name: t.clone().requires_grad_() for name, t in tensors.items()}
    used = [name for name in TARGET_NAMES if name in target.names]
    grads = torch.autograd.grad(target.evaluate(leaves), [leaves[n] for n in used], allow_unused=True)
    for name, grad in zip(used, grads, strict=True):
        assert masks[name].shape == tensors[name].shape and masks[name].dtype == torch.bool
        if grad is not None:
            depends = (grad != 0) & grad.isfinite()
            assert not (depends & ~masks[name]).any(), f"{text!r}: {name} read outside its mask"


@pytest.mark.parametrize("text", ["y[:, -1].sum()", "(y[0] - y[1]).pow(2).mean()", "output.abs()[:, 3].norm()",
                                  "-2.5 * h_n[-1].sum() / 4 + 1", "y[..., 0].square().sum()", "y[:, 1:8:3].mean()",
                                  "y.sum(-1)[:, -1].sum()", "(out ** 2).sum()"])
def test_to_code_re_emits_an_equivalent_target(text: str) -> None:
    gen = torch.Generator().manual_seed(0)
    tensors = {"y": torch.randn(2, 10, 4, generator=gen, dtype=torch.float64),
               "h_n": torch.randn(3, 2, 4, generator=gen, dtype=torch.float64),
               "out": torch.randn(2, 5, 1, generator=gen, dtype=torch.float64)}
    target = parse_target(text)
    code = target.to_code()
    again = parse_target(code)
    assert again.names == target.names
    assert again.evaluate(tensors).item() == pytest.approx(target.evaluate(tensors).item(), rel=1e-12)
    assert again.to_code() == code  # canonical: a fixed point
