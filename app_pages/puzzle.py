"""Home page: the seed's zero-gradient puzzle reproduced live, answered with one chart."""

from __future__ import annotations

import contextlib

import streamlit as st
import torch

import ui
from gru_explainer import ExplainConfig
from gru_explainer.urlstate import config_to_query

MY_MODEL = '''class MyModel(nn.Module):
    def __init__(self):
        super(MyModel, self).__init__()
        self.Identity = nn.Identity()
        self.GRU = nn.GRU(input_size=3, hidden_size=32, num_layers=2, batch_first=True)
        self.fc = nn.Linear(32, 5)

    def forward(self, input_series):
        self.Identity(input_series)
        output, h = self.GRU(input_series)
        output = output[:, -1, :]        # get last state
        output = self.fc(output)
        output = output.view(-1, 5, 1)   # reorganize output
        return output

model = MyModel()
x = torch.rand([2, 10, 3])
y = model(x)
y.retain_grad()
y[:, -1].sum().backward()
print(torch.allclose(y.grad[:, :-1], torch.tensor(0.)))'''

SECOND_MODEL = '''class SecondModel(nn.Module):
    def __init__(self):
        super(SecondModel, self).__init__()
        self.GRU = nn.GRU(input_size=3, hidden_size=32, num_layers=2, batch_first=True)

    def forward(self, input_series):
        output, h = self.GRU(input_series)
        return output

model = SecondModel()
x = torch.rand([2, 10, 3])
y = model(x)
y.retain_grad()
y[:, -1].sum().backward()
print(torch.allclose(y.grad[:, :-1], torch.tensor(0.)))'''

ANSWER_GRU = '''class GRU(nn.Module):
    def __init__(self, input_size, hidden_size):
        super().__init__()
        self.lin_r = nn.Linear(input_size + hidden_size, hidden_size)
        self.lin_z = nn.Linear(input_size + hidden_size, hidden_size)
        self.lin_in = nn.Linear(input_size, hidden_size)
        self.lin_hn = nn.Linear(hidden_size, hidden_size)
        self.hidden_size = hidden_size

    def forward(self, x):
        bsz, len_, in_ = x.shape
        h = torch.zeros([bsz, self.hidden_size])
        hs = []
        for i in range(len_):
            r = self.lin_r(torch.cat([x[:, i], h], dim=-1)).sigmoid()
            z = self.lin_z(torch.cat([x[:, i], h], dim=-1)).sigmoid()
            n = (self.lin_in(x[:, i]) + r * self.lin_hn(h)).tanh()
            h = (1.-z)*n + z*h
            hs.append(h)
        # the output both as a single tensor and as the tensors really used to compute the states
        return torch.stack(hs, dim=1), hs

model = GRU(input_size=3, hidden_size=32)
x = torch.rand([2, 10, 3])
y, hs = model(x)
y.retain_grad()
for h in hs:
    h.retain_grad()
y[:, -1].sum().backward()'''

ZERO = torch.tensor(0.0)

st.title("Why does a GRU return zero gradients?")
st.markdown(
    "A PyTorch user compared two models to understand how gradients behave, ran `y[:, -1].sum().backward()` and "
    "found `y.grad[:, :-1]` **all zero** in both — although the last output clearly depends on every earlier step. "
    "Below, their code runs again, live (same sizes, seeded weights), and one chart shows where the gradient went.")

mine = ui.cached_explain(ExplainConfig.preset("seed-mymodel"))
second = ui.cached_explain(ExplainConfig.preset("seed-secondmodel"))
answer = ui.cached_explain(ExplainConfig.preset("seed-answer-gru"))
if mine is None or second is None or answer is None:
    st.stop()

left, right = st.columns(2)
with left:
    st.subheader("MyModel: GRU + linear head")
    st.code(MY_MODEL, language="python")
    st.code(str(torch.allclose(mine.grads["out"][:, :-1], ZERO)), language="text")
with right:
    st.subheader("SecondModel: the GRU alone")
    st.code(SECOND_MODEL, language="python")
    st.code(str(torch.allclose(second.stacked_grad[:, :-1], ZERO)), language="text")

st.subheader("The answer's hand-written GRU keeps every h_t")
code, prints = st.columns([3, 2])
with code:
    st.code(ANSWER_GRU, language="python")
with prints:
    hs_grads = [answer.hidden_grad[0, 0, :, t] for t in range(answer.config.seq_len)]
    st.code(
        "print(torch.allclose(y.grad[:, -1], torch.tensor(0.)))   # sanity check\n"
        f"{torch.allclose(answer.stacked_grad[:, -1], ZERO)}\n"
        "print(torch.allclose(y.grad[:, :-1], torch.tensor(0.)))  # unexpected?\n"
        f"{torch.allclose(answer.stacked_grad[:, :-1], ZERO)}\n"
        "print(any(torch.allclose(h.grad, torch.tensor(0.)) for h in hs))\n"
        f"{any(torch.allclose(g, ZERO) for g in hs_grads)}",
        language="python")
    st.markdown("`y.grad` is zero before the last step, yet **no** `h.grad` is zero: the states the loop used "
                "received gradient at every step; the stacked copy `y` did not.")

st.subheader("One chart answers it")
ui.report_chart(second.config, "puzzle")
st.caption("SecondModel (nn.GRU, 2 layers), target `y[:, -1].sum()`, last layer: the gradient of the stacked "
           "output y per step vs the total derivative dL/dh_t of the hidden state the recurrence used at that step.")

st.subheader("So, what was missing?")
st.markdown(
    "1. **Nothing is wrong with autograd.** `y` is a *new* tensor that stacks the hidden states after the "
    "recurrence ran (`torch.stack(hs)` in the answer; the fused kernel's output buffer in `nn.GRU`). The next step "
    "read `h_t`, not `y[:, t]`, so `y.grad[:, t]` holds only the *direct* (partial) derivative: it is non-zero "
    "exactly where the target reads `y`. The total derivative dL/dh_t, the one backpropagation through time "
    "carries, lives on the states. `nn.GRU` never exposes them; this app recomputes them.\n"
    "2. **MyModel is a different story:** its `y` is the head output, shape `[2, 5, 1]`. Axis 1 holds the **5 head "
    "features, not time**, so `y[:, -1]` is feature 4 and `y.grad[:, :-1]` are features 0–3, which the target "
    "simply does not read. Its zeros say nothing about time at all.\n"
    "3. **When are gradients zero?** Exactly when there is no path from the tensor to the target: an output slice "
    "the target does not read, a state after the read step (or, in a reverse direction, before it), an input that "
    "cannot matter. A zero *on* a path has another cause — a dead ReLU unit, a zero factor or an exact cancellation "
    "in the target, or numerical underflow (vanishing gradients) — and the explorer marks each one differently.")
with st.expander("The verdict for SecondModel, computed from its numbers"):
    st.markdown(second.verdict())

st.subheader("Explore further")
for path, label, icon in [
    ("app_pages/explorer.py", "Gradient explorer: any cell, target, device; heatmaps and a reproduce snippet",
     ":material/insights:"),
    ("app_pages/flow.py", "Gradient flow through time: decay and growth with distance", ":material/trending_down:"),
    ("app_pages/graph.py", "Autograd graph: the two paths, drawn", ":material/account_tree:"),
    ("app_pages/devices.py", "Devices & engines: fused vs unrolled, CPU vs GPU", ":material/memory:"),
]:
    with contextlib.suppress(Exception):  # a page not (yet) in this app's navigation gets no link
        st.page_link(path, label=label, icon=icon, query_params=config_to_query(ui.shared_config()))
