"""Pitfalls: autograd surprises around recurrent nets, each run now on the installed torch, with its fix."""

from __future__ import annotations

import streamlit as st
import torch

import ui
from gru_explainer.pitfalls import PITFALLS, Card, Outcome, card, cuda_missing

CARD_CSS = ('[class*="st-key-pitfall_"] pre, [class*="st-key-pitfall_"] code '
            '{ white-space: pre-wrap !important; overflow-wrap: anywhere !important; }')


def _ms(outcome: Outcome) -> str:
    """A run's duration, or "not run"."""
    return f"{outcome.seconds * 1000:.0f} ms" if outcome.ran else "not run"


def _show_problem(result: Card) -> None:
    """The pitfall's result: its live output, or for a cuDNN card without CUDA the GPU message and a CPU run."""
    pitfall = result.pitfall
    if result.problem.ran:
        st.markdown(f"**What it does, run now on `{result.problem.device}`**")
        st.code(result.problem.text, language="text", wrap_lines=True)
        return
    st.info(f"**Not run here:** {ui.md_escape(result.problem.not_run_reason)}.", icon=":material/block:")
    st.markdown(f"**On a CUDA GPU with cuDNN, torch raises** (not run here; quoted from "
                f"{pitfall.gpu_message_source}):")
    st.code(pitfall.gpu_message, language="text", wrap_lines=True)
    if result.problem_cpu is not None:
        clean = result.problem_cpu.error_type is None
        st.markdown("**The same code on this machine's CPU** (`device = 'cpu'`), run now"
                    + (": no cuDNN, no error" if clean else ""))
        st.code(result.problem_cpu.text, language="text", wrap_lines=True)


ui.shared_config()  # shows URL notices, keeps the shared config in the URL
# Error messages hold long unbreakable tokens (file paths): let code blocks in the cards break anywhere, so nothing
# scrolls sideways on a phone. Style-only st.html adds no element space; it lives as long as this page is shown.
st.html(f"<style>{CARD_CSS}</style>")
st.title("Pitfalls")
st.markdown(
    "Autograd surprises people meet around recurrent nets, each **run now on this torch** "
    f"(`{torch.__version__}`): the minimal code, what it really does (the exact error or warning, captured "
    "now), why, and the fix, also run now. The code shown is the very function that ran.")
missing = cuda_missing()
if missing:
    st.caption(f"The two cuDNN cards need a CUDA GPU with cuDNN, and here {missing}: they show the message a GPU "
               "gives, labelled as not run, and run the same code on the CPU instead.")

for number, pitfall in enumerate(PITFALLS, start=1):
    result = card(pitfall.id)
    with st.container(border=True, key=f"pitfall_{pitfall.id}"):
        st.subheader(f"{number}. {pitfall.title}", anchor=pitfall.id)
        if result.mismatches:
            st.warning("On this torch the results differ from what this card explains, so the explanation may be "
                       "out of date: " + ui.md_escape("; ".join(result.mismatches)), icon=":material/warning:")
        st.markdown("**The pitfall**")
        st.code(pitfall.code, language="python", wrap_lines=True)
        _show_problem(result)
        st.markdown(f"**Why.** {pitfall.why}")
        st.markdown("**The fix**")
        st.code(pitfall.fix_code, language="python", wrap_lines=True)
        not_here = pitfall.needs_cuda and not result.problem.ran
        where = " (it runs; there is no cuDNN here to avoid)" if not_here else ""
        st.markdown(f"**Its output, run now on `{result.fix.device}`**{where}")
        st.code(result.fix.text, language="text", wrap_lines=True)
        st.markdown(f"**In the explorer:** [{pitfall.explorer_label}]({pitfall.explorer_url})")
        reports = " · ".join(f"[{label}]({url})" for label, url in pitfall.references)
        ran = result.problem_cpu or result.problem
        st.caption(f"Ran on torch {ran.torch_version}: the pitfall ({_ms(result.problem)}"
                   + (f"; on the CPU {_ms(result.problem_cpu)}" if result.problem_cpu is not None else "")
                   + f"), the fix on {result.fix.device} ({_ms(result.fix)})."
                   + (f" Reports: {reports}" if reports else ""))
