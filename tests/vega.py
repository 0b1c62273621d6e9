"""What a Vega-Lite chart element of an AppTest run carries: its spec and its data, as the browser receives them."""

from __future__ import annotations

import json

import pandas as pd
import pyarrow as pa


def chart_spec(element) -> dict:
    """The element's Vega-Lite spec."""
    return json.loads(element.proto.spec)


def chart_data(element) -> pd.DataFrame:
    """The element's one data set (Arrow), or its inline values (Altair embeds large data inline)."""
    if element.proto.datasets:
        (dataset,) = element.proto.datasets
        return pa.ipc.open_stream(dataset.data.data).read_all().to_pandas()
    return pd.DataFrame(chart_spec(element)["data"]["values"])


def element_data(element) -> pd.DataFrame:
    """A chart element's data: its Arrow table (Streamlit moves a panel's inline values there), else chart_data's."""
    if element.proto.HasField("data") and element.proto.data.data:
        return pa.ipc.open_stream(element.proto.data.data).read_all().to_pandas()
    return chart_data(element)


def explorer_charts(at) -> dict[str, list]:
    """The explorer's chart elements by chart: "norm" (one panel per layer × direction), "heatmap" (one per
    quantity), "input"; told apart by their data's columns."""
    groups: dict[str, list] = {"norm": [], "heatmap": [], "input": []}
    for element in at.get("vega_lite_chart"):
        rows = element_data(element)
        kind = "heatmap" if "unit" in rows else "input" if set(rows["quantity"]) == {"input"} else "norm"
        groups[kind].append(element)
    return groups


def explorer_complete(at) -> bool:
    """Every chart of the explorer is on the page (norm panels, heatmap panels, the input chart)."""
    return all(explorer_charts(at).values())


def joined(elements: list) -> pd.DataFrame:
    """The rows of several panels, concatenated."""
    return pd.concat([element_data(e) for e in elements], ignore_index=True)
