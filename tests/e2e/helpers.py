"""Helpers the end-to-end tests share: URLs, waiting after an interaction, reading the verdict, driving widgets."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from scripts.screenshots import new_context, open_page, run_started_since_ready, wait_for_app

TARGET_LINE = re.compile(r"^Target\s.+\s=\s")
NUMBER = r"(-?(?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?|-?inf|nan)"


def page_url(base_url: str, path: str, query: str = "") -> str:
    """An app URL: `path` like "/explorer", optional query string without "?"."""
    return base_url.rstrip("/") + path + (f"?{query}" if query else "")


def visit(tab: Any, url: str) -> None:
    """Open `url` and wait until the script finished and every chart drew (no exception on the page)."""
    open_page(tab, url)


def page_once(browser: Any, url: str) -> Iterator[Any]:
    """A module fixture's body: `url` opened once in a fresh browser context (60 s waits), closed afterwards."""
    context = new_context(browser)
    context.set_default_timeout(60_000)
    tab = context.new_page()
    visit(tab, url)
    yield tab
    context.close()


def settle(tab: Any) -> None:
    """After an interaction: wait for the rerun to start (up to 1.5 s; it may have finished already) and finish.

    `wait_for_app` counts the runs that start in the page after it saw the app ready, so a rerun that came and went
    before this call is seen at once instead of waiting out the 1.5 s (which remains the wait when an interaction
    started no rerun at all)."""
    run_started_since_ready(tab, timeout_ms=1_500)
    wait_for_app(tab)


def verdict_line(tab: Any) -> Any:
    """The verdict's first line ("Target `expr` = value (CELL, … layer(s), …, T = …, on device).")."""
    return tab.locator('[data-testid="stMarkdownContainer"] p').filter(has_text=TARGET_LINE).first


def verdict_value(text: str) -> float:
    """The target value in a verdict line."""
    match = re.search(r"=\s*" + NUMBER + r"\s*\(", text)
    assert match, f"no target value in {text!r}"
    return float(match.group(1))


def chart_svg(tab: Any, index: int) -> str:
    """The svg markup of the index-th Vega chart on the page (to compare before / after a change)."""
    return tab.locator('[data-testid="stVegaLiteChart"]').nth(index).locator("svg").first.inner_html()


def wait_chart_changed(tab: Any, index: int, before: str, timeout_ms: float = 30_000) -> str:
    """Wait until the index-th Vega chart's svg differs from `before` (Vega redraws asynchronously); returns it."""
    tab.wait_for_function(
        """([index, before]) => {
            const chart = document.querySelectorAll('[data-testid="stVegaLiteChart"]')[index];
            const svg = chart && chart.querySelector('svg');
            return svg && svg.innerHTML !== before;
        }""", arg=[index, before], timeout=timeout_ms, polling=100)
    return chart_svg(tab, index)


def field(tab: Any, label: str, area: str = "stMain") -> Any:
    """The input element of the widget labelled `label` (Streamlit puts the label in aria-label) in an area.

    area: "stMain" or "stSidebar".
    """
    return tab.locator(f'[data-testid="{area}"] input[aria-label="{label}"]')


def choose(tab: Any, combobox: Any, option: str) -> None:
    """Open a Streamlit selectbox (its combobox input) and click the option with exactly this text."""
    combobox.click()
    tab.locator('[role="option"]').filter(has_text=re.compile(rf"^\s*{re.escape(option)}\s*$")).first.click()
    settle(tab)


def type_into(tab: Any, text_input: Any, text: str) -> None:
    """Replace a Streamlit text input's value and press Enter (which submits it and reruns the script)."""
    text_input.fill(text)
    text_input.press("Enter")
    settle(tab)


AA_CONTRAST = 4.5
"""WCAG 2.x level AA: the least contrast ratio for normal-size text (chart labels and captions are all small)."""
CSS_RGB = re.compile(r"rgba?\(\s*([\d.]+)[\s,]+([\d.]+)[\s,]+([\d.]+)(?:\s*[,/]\s*([\d.]+%?))?\s*\)")


def parse_colour(colour: str) -> tuple[float, float, float, float]:
    """(r, g, b, alpha) of a CSS colour as browsers compute it ("rgb(…)", "rgba(…)") or as hex ("#rgb", "#rrggbb",
    "#rrggbbaa"): channels 0..255, alpha 0..1. Raises ValueError on anything else (e.g. "none", a name)."""
    text = colour.strip().lower()
    if text.startswith("#") and len(text) in (4, 5, 7, 9):
        digits = text[1:] if len(text) > 5 else "".join(c * 2 for c in text[1:])
        channels = [int(digits[i:i + 2], 16) for i in range(0, len(digits), 2)]
        return (*map(float, channels[:3]), channels[3] / 255 if len(channels) == 4 else 1.0)
    match = CSS_RGB.fullmatch(text)
    if match is None:
        raise ValueError(f"not a colour this test can read: {colour!r}")
    red, green, blue, alpha = match.groups()
    opacity = 1.0 if alpha is None else float(alpha[:-1]) / 100 if alpha.endswith("%") else float(alpha)
    return float(red), float(green), float(blue), opacity


def composite(top: tuple[float, ...], bottom: tuple[float, ...], opacity: float = 1.0) -> tuple[float, float, float]:
    """The opaque colour a browser shows for `top` (r, g, b[, alpha]) drawn at `opacity` over opaque `bottom`:
    source-over in sRGB, as browsers blend."""
    alpha = (top[3] if len(top) > 3 else 1.0) * opacity
    return tuple(alpha * t + (1 - alpha) * b for t, b in zip(top[:3], bottom[:3], strict=True))  # type: ignore


def relative_luminance(rgb: tuple[float, ...]) -> float:
    """WCAG 2.x relative luminance of an sRGB colour (channels 0..255): linearise each channel, weight 0.2126 /
    0.7152 / 0.0722."""
    def linear(channel: float) -> float:
        value = channel / 255
        return value / 12.92 if value <= 0.04045 else ((value + 0.055) / 1.055) ** 2.4

    red, green, blue = (linear(c) for c in rgb[:3])
    return 0.2126 * red + 0.7152 * green + 0.0722 * blue


def contrast_ratio(first: tuple[float, ...], second: tuple[float, ...]) -> float:
    """WCAG 2.x contrast ratio (L_light + 0.05) / (L_dark + 0.05) of two opaque colours: 1 (same) to 21."""
    lighter, darker = sorted((relative_luminance(first), relative_luminance(second)), reverse=True)
    return (lighter + 0.05) / (darker + 0.05)


def hex_colour(rgb: tuple[float, ...]) -> str:
    """An opaque colour as #rrggbb (for failure messages)."""
    return "#" + "".join(f"{round(c):02x}" for c in rgb[:3])


APP_BACKGROUND = """() => getComputedStyle(document.querySelector('[data-testid="stApp"]')).backgroundColor"""


def background_luminance(tab: Any) -> float:
    """The app background's relative luminance (0 black .. 1 white): which theme the page is drawn in."""
    return relative_luminance(parse_colour(tab.evaluate(APP_BACKGROUND)))


def assert_theme(tab: Any, scheme: str) -> None:
    """The page is drawn in `scheme`: a light background (the light theme's white) or a dark one."""
    luminance = background_luminance(tab)
    assert (luminance > 0.8) if scheme == "light" else (luminance < 0.2), (
        f"expected the {scheme} theme, the app background is {tab.evaluate(APP_BACKGROUND)}")


def switch_scheme(tab: Any, scheme: str) -> None:
    """Switch the browser's colour scheme in place (no reload, the same session): Streamlit follows the system theme
    and redraws the page in it (chart text follows the CSS colour, ui.CHART_TEXT_CONFIG). Waits until the app's
    background changed and the page settled again; AssertionError unless it is now drawn in `scheme`."""
    before = tab.evaluate(APP_BACKGROUND)
    tab.emulate_media(color_scheme=scheme)
    tab.wait_for_function(f"(before) => ({APP_BACKGROUND})() !== before", arg=before, polling=50)
    wait_for_app(tab)
    assert_theme(tab, scheme)
