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
