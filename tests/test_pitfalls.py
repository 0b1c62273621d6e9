"""The pitfall cards (gru_explainer.pitfalls): each pitfall really happens on the installed torch and its fix fixes it.

When a torch release changes a behaviour, the card's test here fails and names the card and what changed.
"""

from __future__ import annotations

import ast
import mmap
import textwrap
import threading
import warnings
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import torch
from torch.func import jacrev

from gru_explainer import ExplainConfig, explain
from gru_explainer import pitfalls as P
from gru_explainer.urlstate import config_from_query

CPU_CARDS = [p for p in P.PITFALLS if not p.needs_cuda]
CUDNN_CARDS = [p for p in P.PITFALLS if p.needs_cuda]
HAS_CUDNN = not P.cuda_missing()
CHANGED = f"torch {torch.__version__} changed behaviour for the card"

# Written out here, independently of each card's Expect, so a loosened expectation cannot hide a change:
# card id -> (exception type or None, a stable part of its message or of the printed output)
PROBLEMS = {
    "nonleaf-grad": (None, "None"),
    "retain-too-late": (None, "None"),
    "inplace": (RuntimeError, "has been modified by an inplace operation"),
    "backward-twice": (RuntimeError, "Trying to backward through the graph a second time"),
    "grad-unused": (RuntimeError, "appears to not have been used in the graph. Set allow_unused=True"),
    "bidirectional": (None, "True\nFalse\n"),
    "padding": (None, "False\ntensor([True, True, True, True, True])"),
    "torch-func": (RuntimeError, "Batching rule not implemented for aten::gru.input"),
}
ON_GPU = {
    "cudnn-eval": (RuntimeError, "cudnn RNN backward can only be called in training mode"),
    "cudnn-double": (NotImplementedError, "Double backwards is not supported for CuDNN RNNs"),
}


def test_at_least_the_nine_pitfalls_of_the_issue() -> None:
    ids = [p.id for p in P.PITFALLS]
    assert len(ids) == len(set(ids)) >= 9
    assert set(PROBLEMS) | set(ON_GPU) == set(ids)
    assert all(p.title and p.why and p.explorer_label for p in P.PITFALLS)


@pytest.mark.parametrize("pitfall", CPU_CARDS, ids=[p.id for p in CPU_CARDS])
def test_the_pitfall_happens_on_this_torch(pitfall: P.Pitfall) -> None:
    outcome = P.run(pitfall, "problem")
    assert outcome.ran and outcome.torch_version == torch.__version__ and outcome.device == "cpu"
    error, fragment = PROBLEMS[pitfall.id]
    if error is None:
        assert outcome.error_type is None, f"{CHANGED} {pitfall.id!r}: it now raises {outcome.text}"
        assert fragment in outcome.printed, f"{CHANGED} {pitfall.id!r}: it printed {outcome.printed!r}"
    else:
        assert outcome.error_type == error.__name__, (
            f"{CHANGED} {pitfall.id!r}: expected {error.__name__}, got {outcome.error_type}: {outcome.error_message}")
        assert fragment in outcome.error_message, (
            f"{CHANGED} {pitfall.id!r}: the {error.__name__} message is now {outcome.error_message!r}")
    assert not pitfall.expect_problem.problems(outcome), f"{CHANGED} {pitfall.id!r}"
    assert outcome.text.endswith(f"{error.__name__}: {outcome.error_message}") if error else outcome.text


@pytest.mark.parametrize("pitfall", P.PITFALLS, ids=[p.id for p in P.PITFALLS])
def test_the_fix_fixes_it(pitfall: P.Pitfall) -> None:
    device = None if HAS_CUDNN or not pitfall.needs_cuda else "cpu"
    outcome = P.run(pitfall, "fix", device)
    assert outcome.ran and outcome.error_type is None, f"{CHANGED} {pitfall.id!r}: the fix raises {outcome.text}"
    assert not pitfall.expect_fix.problems(outcome), f"{CHANGED} {pitfall.id!r}: " + "; ".join(
        pitfall.expect_fix.problems(outcome))


def test_the_non_leaf_warning_is_torchs_and_the_fix_shows_the_puzzle() -> None:
    outcome = P.run(P.get("nonleaf-grad"))
    assert [w.split(":")[0] for w in outcome.warnings] == ["UserWarning"]
    assert "The .grad attribute of a Tensor that is not a leaf Tensor is being accessed" in outcome.warnings[0]
    assert "retain_grad()" in outcome.warnings[0]
    assert outcome.transcript[0].startswith("UserWarning:") and outcome.transcript[-1] == "None\n"
    fix = P.run(P.get("nonleaf-grad"), "fix")
    assert fix.printed.count("[0., 0., 0., 0.]") == 4 and fix.printed.count("[1., 1., 1., 1.]") == 1
    late = P.run(P.get("retain-too-late"))
    assert late.printed == "None\n" and not late.warnings  # retains_grad is set: no warning, still None


@pytest.mark.parametrize("pitfall", CUDNN_CARDS, ids=[p.id for p in CUDNN_CARDS])
def test_cudnn_cards_run_live_on_a_gpu_or_say_they_did_not(pitfall: P.Pitfall) -> None:
    error, fragment = ON_GPU[pitfall.id]
    assert fragment in pitfall.gpu_message and pitfall.gpu_message.startswith(f"{error.__name__}: ")
    assert pitfall.expect_problem.error is error and fragment.startswith(pitfall.expect_problem.message[:20])
    outcome = P.run(pitfall, "problem")
    if HAS_CUDNN:  # the real thing
        assert outcome.ran and outcome.device == "cuda"
        assert outcome.error_type == error.__name__ and fragment in outcome.error_message, (
            f"{CHANGED} {pitfall.id!r} on {torch.cuda.get_device_name()}: {outcome.text}")
        card = P.card(pitfall.id)
        assert card.problem_cpu is None and not card.mismatches
        return
    assert not outcome.ran and outcome.not_run_reason == P.cuda_missing()
    assert outcome.text.startswith("(not run: ") and outcome.error_type is None
    on_cpu = P.run(pitfall, "problem", "cpu")
    assert on_cpu.ran and on_cpu.device == "cpu" and on_cpu.error_type is None, (
        f"{CHANGED} {pitfall.id!r}: the CPU kernel now raises {on_cpu.text}")
    card = P.card(pitfall.id)
    assert card.problem_cpu is not None and card.problem_cpu.transcript == on_cpu.transcript
    assert card.fix.device == "cpu" and not card.mismatches


def test_the_double_backward_message_is_the_one_this_torch_build_carries() -> None:
    """The autograd formulas are compiled for every backend: the CPU build holds the cuDNN message too."""
    lib = Path(torch.__file__).parent / "lib"
    needles = [P.CUDNN_DOUBLE_REASON.encode(), b"the derivative for '", b"' is not implemented."]
    found = set()
    for path in sorted(lib.glob("libtorch_c*.so*")):
        with path.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            found |= {n for n in needles if data.find(n) >= 0}
    missing = [n.decode()[:60] for n in needles if n not in found]
    assert not missing, f"torch {torch.__version__}'s libraries no longer contain {missing}: update the cuDNN card"


def _body(fn: object) -> list[ast.stmt]:
    node = ast.parse(textwrap.dedent(__import__("inspect").getsource(fn))).body[0]
    assert isinstance(node, ast.FunctionDef)
    return node.body[1:] if ast.get_docstring(node) is not None else node.body


@pytest.mark.parametrize("pitfall", P.PITFALLS, ids=[p.id for p in P.PITFALLS])
def test_the_code_shown_is_the_code_that_runs(pitfall: P.Pitfall) -> None:
    for fn, shown in ((pitfall.problem, pitfall.code), (pitfall.fix, pitfall.fix_code)):
        tree = ast.parse(shown).body
        if pitfall.needs_cuda:  # the parameter becomes an assignment of its default first
            assert shown.startswith("device = 'cuda'\n\n")
            assert ast.dump(tree[0]) == ast.dump(ast.parse("device = 'cuda'").body[0])
            tree = tree[1:]
        assert [ast.dump(s) for s in tree] == [ast.dump(s) for s in _body(fn)]
        assert "def " not in shown.splitlines()[0] and '"""' not in shown
        assert "import torch" in shown  # each snippet is self-contained: copy, paste, run
    assert "eval(" not in pitfall.code.replace(".eval()", "") and "exec(" not in pitfall.code


def test_the_cudnn_eval_fix_through_watch_gives_the_same_input_gradient() -> None:
    printed = _printed(P.cudnn_eval_fix, device="cpu")
    without_cudnn, under_watch, shape = printed.split("tensor(")[1], *printed.split("tensor(")[2].rsplit("\n(", 1)
    assert without_cudnn.strip() == under_watch.strip()  # without cuDNN and under watch: the same dL/dx (printed)
    assert "(" + shape.strip() == "(1, 1, 2, 5, 4)"


def test_watch_does_not_help_double_backward_as_the_card_says() -> None:
    """The double-backward card says watch's backward is once-differentiable: a gradient of a gradient raises."""
    import gru_explainer as gx

    assert "once-differentiable" in P.get("cudnn-double").fix_code
    gru = torch.nn.GRU(3, 4, batch_first=True)
    x = torch.rand(2, 5, 3, requires_grad=True)
    with gx.watch(gru):
        y, _ = gru(x)
        (g,) = torch.autograd.grad(y[:, -1].sum(), x, create_graph=True)
        with pytest.raises(RuntimeError):
            g.pow(2).sum().backward()


def _printed(fn, **kwargs) -> str:
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        fn(**kwargs)
    return out.getvalue()


def test_run_captures_without_touching_stdout_or_the_warning_filters(capsys: pytest.CaptureFixture[str]) -> None:
    filters = list(warnings.filters)
    show = warnings.showwarning
    outcome = P.run(P.get("bidirectional"))
    assert outcome.printed.startswith("True\nFalse\n")
    assert capsys.readouterr().out == ""
    assert warnings.filters == filters and warnings.showwarning is show


def test_another_threads_warning_is_not_recorded() -> None:
    started, release = threading.Event(), threading.Event()

    def slow() -> None:
        started.set()
        release.wait(5)
        print("done")

    def other() -> None:
        started.wait(5)
        warnings.warn("from another thread", UserWarning, stacklevel=1)  # shown as usual, not recorded as ours
        release.set()

    thread = threading.Thread(target=other)
    thread.start()
    with pytest.warns(UserWarning, match="from another thread"):  # forwarded to the usual handler
        outcome = P.run_function(slow)
        thread.join()
    assert outcome.printed == "done\n" and outcome.warnings == ()


def test_expect_reports_every_kind_of_difference() -> None:
    base = P.Outcome(ran=True, torch_version="x", device="cpu", printed="a\nb\n", warnings=("UserWarning: w",),
                     error_type="RuntimeError", error_message="boom here")
    assert not P.Expect(error=RuntimeError, message="boom", printed=("a", "b"), warning="w").problems(base)
    assert P.Expect(error=ValueError, message="boom").problems(base)[0].startswith("expected ValueError")
    assert "contain 'bang'" in P.Expect(error=RuntimeError, message="bang").problems(base)[0]
    assert "expected no error" in P.Expect().problems(base)[0]
    assert P.Expect(error=RuntimeError, message="boom", printed=("b", "a")).problems(base)
    assert P.Expect(error=RuntimeError, message="boom", no_warnings=True).problems(base)
    assert P.Expect(error=RuntimeError, message="boom", warning="other").problems(base)
    not_run = P.Outcome(ran=False, torch_version="x", device="cuda", not_run_reason="no GPU")
    assert P.Expect().problems(not_run) == ["it did not run: no GPU"]


def test_every_card_matches_its_explanation_and_is_cached() -> None:
    for pitfall in P.PITFALLS:
        card = P.card(pitfall.id)
        assert card.mismatches == (), (pitfall.id, card.mismatches)
        assert P.run_cached(pitfall.id, "problem") is card.problem  # run once per process
    with pytest.raises(KeyError, match="known: nonleaf-grad"):
        P.get("nope")
    with pytest.raises(ValueError, match="part must be"):
        P.run(P.PITFALLS[0], "both")


# The explorer links: each config parses cleanly and shows what its label says.


def _config(pitfall: P.Pitfall) -> ExplainConfig:
    url = urlsplit(pitfall.explorer_url)
    assert url.path == "explorer"
    query = {k: v[-1] for k, v in parse_qs(url.query).items()}
    cfg, notices = config_from_query(query)
    assert not notices, (pitfall.id, notices)
    return cfg


def test_every_explorer_link_parses_without_notices() -> None:
    for pitfall in P.PITFALLS:
        cfg = _config(pitfall)
        assert cfg.cell == "gru" and cfg.device == ("auto" if pitfall.needs_cuda else ExplainConfig().device)


def test_explorer_links_show_what_their_labels_say() -> None:
    zero = torch.tensor(0.0)
    nonleaf = explain(_config(P.get("nonleaf-grad")))
    assert torch.equal(nonleaf.stacked_grad[:, :-1], torch.zeros_like(nonleaf.stacked_grad[:, :-1]))
    assert (nonleaf.hidden_grad[..., :-1, :].abs().sum((0, 1, 2, 4)) > 0).all()
    assert _config(P.get("retain-too-late")) == _config(P.get("nonleaf-grad"))

    squared = explain(_config(P.get("inplace")))
    assert torch.allclose(squared.stacked_grad, 2 * squared.output)

    both = explain(_config(P.get("backward-twice")))
    assert torch.equal(both.grads["h_n"], torch.ones_like(both.grads["h_n"]))
    assert torch.equal(both.stacked_grad[:, -1], torch.ones_like(both.stacked_grad[:, -1]))

    unused = explain(_config(P.get("grad-unused")))
    assert torch.equal(unused.grads["h_n"].abs().sum(), zero) and unused.stacked_grad[:, -1].abs().sum() > 0

    bidir = explain(_config(P.get("bidirectional")))
    assert bidir.config.bidirectional and bidir.hidden_grad.shape[1] == 2
    assert torch.equal(bidir.hidden_grad[0, 1, :, :-1].abs().sum(), zero)  # reverse: zero before the last step
    assert (bidir.hidden_grad[0, 0, :, :-1].abs().sum((0, 2)) > 0).all()  # forward: every step

    padded = explain(_config(P.get("padding")))
    assert torch.equal(padded.hidden_grad[..., 3:, :].abs().sum(), zero)
    assert torch.equal(padded.input_grad[:, 3:].abs().sum(), zero) and (padded.input_grad[:, :3].abs().sum() > 0)

    func = explain(_config(P.get("torch-func")))
    module, x = func.module.cpu(), func.inputs.detach().cpu()
    jac = jacrev(lambda inputs: module(inputs)[0][:, -1])(x)  # [B, H, B, T, I]
    assert torch.allclose(jac.sum((0, 1)), func.input_grad, atol=1e-6)
