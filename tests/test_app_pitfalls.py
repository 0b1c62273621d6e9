"""AppTest of the pitfalls page: it renders every card from a live run, with no exception and no stale text."""

from __future__ import annotations

from pathlib import Path

import torch
from streamlit.testing.v1 import AppTest

from gru_explainer import pitfalls as P

ROOT = Path(__file__).resolve().parents[1]
PAGE = str(ROOT / "app_pages" / "pitfalls.py")
APP = str(ROOT / "app.py")


def _run() -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=120).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_one_card_per_pitfall_without_exception_error_or_warning() -> None:
    at = _run()
    assert not at.error and not at.warning, [w.value for w in at.warning]  # a warning = a card is out of date
    assert at.title[0].value == "Pitfalls"
    assert [s.value for s in at.subheader] == [f"{i}. {p.title}" for i, p in enumerate(P.PITFALLS, start=1)]
    captions = [c.value for c in at.caption if c.value.startswith("Ran on torch")]
    assert len(captions) == len(P.PITFALLS)
    assert all(f"Ran on torch {torch.__version__}:" in c for c in captions)


def test_cards_show_their_code_and_what_it_did_now() -> None:
    at = _run()
    codes = [c.value for c in at.code]
    markdown = [m.value for m in at.markdown]
    for pitfall in P.PITFALLS:
        card = P.card(pitfall.id)
        assert pitfall.code in codes and pitfall.fix_code in codes, pitfall.id
        shown = card.problem if card.problem.ran else card.problem_cpu
        assert shown is not None and shown.text in codes, pitfall.id
        assert card.fix.text in codes, pitfall.id
        assert f"**Why.** {pitfall.why}" in markdown
        assert f"**In the explorer:** [{pitfall.explorer_label}]({pitfall.explorer_url})" in markdown
    # the exact messages torch gave just now are on the page
    assert any("Trying to backward through the graph a second time" in c for c in codes)
    assert any("Batching rule not implemented for aten::gru.input" in c for c in codes)
    assert any(c.startswith("UserWarning: The .grad attribute of a Tensor that is not a leaf") for c in codes)


def test_cudnn_cards_are_labelled_not_run_without_cuda() -> None:
    at = _run()
    infos = [i.value for i in at.info]
    codes = [c.value for c in at.code]
    cudnn = [p for p in P.PITFALLS if p.needs_cuda]
    if P.cuda_missing():
        assert len(infos) == len(cudnn) and all(i.startswith("**Not run here:**") for i in infos)
        assert all(p.gpu_message in codes for p in cudnn)
        texts = " ".join(m.value for m in at.markdown)
        assert texts.count("**On a CUDA GPU with cuDNN, torch raises** (not run here;") == len(cudnn)
        assert texts.count("(it runs; there is no cuDNN here to avoid)") == len(cudnn)
    else:
        assert not infos
        assert any(P.CUDNN_EVAL_MESSAGE in c for c in codes)


def test_a_changed_behaviour_shows_a_warning_instead_of_a_stale_explanation(monkeypatch) -> None:
    changed = P.Outcome(ran=True, torch_version="99.0", device="cpu", transcript=("fine\n",), printed="fine\n")
    real = P.run_cached

    def fake(pitfall_id: str, part: str = "problem", device: str | None = None) -> P.Outcome:
        return changed if (pitfall_id, part) == ("inplace", "problem") else real(pitfall_id, part, device)

    monkeypatch.setattr(P, "run_cached", fake)
    at = _run()
    assert len(at.warning) == 1 and "differ from what this card explains" in at.warning[0].value
    assert "expected RuntimeError, got no error" in at.warning[0].value
    assert "fine" in [c.value for c in at.code]


def test_the_app_lists_and_runs_the_page() -> None:
    at = AppTest.from_file(APP, default_timeout=120).run()
    assert "app_pages/pitfalls.py" in (ROOT / "app.py").read_text()
    at.switch_page("app_pages/pitfalls.py").run()
    assert not at.exception and not at.error
    assert at.title[0].value == "Pitfalls"
