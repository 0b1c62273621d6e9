"""Text contrast, measured in a real browser: every chart's text (axis, legend and title labels) and every caption
reaches WCAG AA (4.5:1) against the background behind it, in the light and the dark theme (the app follows the
visitor's preference; each page loads once and is switched to the other theme in place). The luminance / contrast
math (helpers.py) is unit-tested here too."""

from __future__ import annotations

from typing import Any

import pytest

from scripts.screenshots import new_context, open_page, wait_for_app

from .helpers import (
    AA_CONTRAST,
    assert_theme,
    composite,
    contrast_ratio,
    hex_colour,
    page_url,
    parse_colour,
    relative_luminance,
    switch_scheme,
)

pytestmark = pytest.mark.e2e
PAGES = {"explorer": "cell=lstm&bidirectional=true", "flow": ""}
"""The pages with the richest charts (the explorer's bidirectional LSTM: heatmaps and norm panels with legends)."""

TEXT_COLOURS = """() => {
    const rgba = c => c && c !== 'none' && c !== 'transparent' && !c.startsWith('url') && c !== 'rgba(0, 0, 0, 0)';
    const opacity = el => {  // the element's own and every ancestor's opacity multiply
        let value = 1;
        for (let node = el; node && node.nodeType === 1; node = node.parentElement)
            value *= parseFloat(getComputedStyle(node).opacity || '1');
        return value;
    };
    const backgrounds = el => {  // the colours behind el, nearest first: Vega's own background, then the page's
        const layers = [];
        const svg = el.closest && el.closest('svg');
        if (svg) {
            const rect = svg.querySelector(':scope > rect');  // Vega's svg renderer draws its background here
            if (rect && rgba(getComputedStyle(rect).fill))
                layers.push([getComputedStyle(rect).fill, parseFloat(getComputedStyle(rect).fillOpacity || '1')]);
        }
        for (let node = svg || el; node && node.nodeType === 1; node = node.parentElement) {
            const colour = getComputedStyle(node).backgroundColor;
            if (rgba(colour)) layers.push([colour, 1]);
        }
        return layers;
    };
    const found = [];
    document.querySelectorAll('[data-testid="stVegaLiteChart"] svg text').forEach(text => {
        const label = text.textContent.trim();
        if (!label) return;
        const style = getComputedStyle(text);
        const group = text.closest('g[class*="role-"]');
        const role = group ? [...group.classList].find(c => c.startsWith('role-')) : 'svg';
        found.push({kind: `chart ${role}`, text: label, colour: style.fill,
                    opacity: opacity(text) * parseFloat(style.fillOpacity || '1'), behind: backgrounds(text)});
    });
    document.querySelectorAll('[data-testid="stCaptionContainer"], [data-testid="stCaptionContainer"] p')
        .forEach(caption => {
            const label = caption.textContent.trim();
            if (!label) return;
            found.push({kind: 'caption', text: label, colour: getComputedStyle(caption).color,
                        opacity: opacity(caption), behind: backgrounds(caption)});
        });
    return found;
}"""


def measured_contrast(item: dict[str, Any]) -> tuple[float, str, str]:
    """(contrast ratio, text colour, background colour) as the visitor sees one text element: its colour at its
    opacity over the layers of background behind it (composited from the page up), both as #rrggbb."""
    background: tuple[float, ...] = (255.0, 255.0, 255.0)  # the browser's canvas when nothing below is opaque
    for colour, opacity in reversed(item["behind"]):
        background = composite(parse_colour(colour), background, opacity)
    shown = composite(parse_colour(item["colour"]), background, item["opacity"])
    return contrast_ratio(shown, background), hex_colour(shown), hex_colour(background)


def wait_for_chart_text(tab: Any, timeout_ms: float = 60_000) -> None:
    """Wait until the page's charts drew their text, and settled again. In the dark scheme the app can report ready
    before any chart element exists (the theme switch re-renders the page), and every text would go unmeasured."""
    tab.wait_for_function(
        """() => {
            const charts = [...document.querySelectorAll('[data-testid="stVegaLiteChart"]')];
            return charts.length > 0 && charts.every(chart => chart.querySelector('svg text'));
        }""", timeout=timeout_ms, polling=100)
    wait_for_app(tab, timeout_ms)


def text_contrasts(tab: Any) -> list[tuple[float, str, str, str, str]]:
    """Every visible chart text and caption on the page: (ratio, kind, text, colour, background), worst first.
    Invisible text (opacity 0: Vega hides overlapping labels that way) is left out: no one reads it."""
    rows = []
    for item in tab.evaluate(TEXT_COLOURS):
        if item["opacity"] <= 0:
            continue
        ratio, colour, background = measured_contrast(item)
        rows.append((ratio, item["kind"], item["text"][:40], colour, background))
    return sorted(rows)


def test_contrast_math_matches_wcag_reference_values() -> None:
    """Black on white is 21:1, equal colours 1:1, #777 on white just below AA (4.48), #767676 just above (4.54)."""
    white, black = parse_colour("#fff"), parse_colour("rgb(0, 0, 0)")
    assert contrast_ratio(black, white) == pytest.approx(21.0)
    assert contrast_ratio(white, white) == pytest.approx(1.0)
    assert contrast_ratio(parse_colour("#777777"), white) == pytest.approx(4.48, abs=0.01)
    assert contrast_ratio(parse_colour("#767676"), white) == pytest.approx(4.54, abs=0.01)
    assert contrast_ratio(white, parse_colour("#808495")) == pytest.approx(3.72, abs=0.01)  # the axis grey
    assert relative_luminance(parse_colour("#ffffff")) == pytest.approx(1.0)
    assert relative_luminance(parse_colour("#000")) == 0.0


def test_colours_parse_and_composite_as_a_browser_draws_them() -> None:
    """rgba / hex-with-alpha are read with their alpha, and half-transparent black over white is mid grey."""
    assert parse_colour("rgba(49, 51, 63, 0.6)") == (49.0, 51.0, 63.0, 0.6)
    assert parse_colour("rgb(49 51 63 / 60%)") == (49.0, 51.0, 63.0, 0.6)
    assert parse_colour("#31333f99")[3] == pytest.approx(0.6)
    assert composite(parse_colour("rgba(0, 0, 0, 0.5)"), (255.0, 255.0, 255.0)) == (127.5, 127.5, 127.5)
    assert composite(parse_colour("#000"), (255.0, 255.0, 255.0), opacity=0.0) == (255.0, 255.0, 255.0)
    with pytest.raises(ValueError):
        parse_colour("none")


FIRST_SCHEME = {"explorer": "light", "flow": "dark"}
"""The theme each page loads in (it is then switched to the other in place): both themes are measured once as a fresh
page load draws them."""


def assert_contrast(tab: Any, path: str, scheme: str) -> None:
    """Every visible chart text and caption on the page, as drawn now in `scheme`, reaches AA_CONTRAST."""
    assert_theme(tab, scheme)
    rows = text_contrasts(tab)
    kinds = {kind for _, kind, *_ in rows}
    assert "caption" in kinds and "chart role-axis-label" in kinds, f"nothing to measure: {sorted(kinds)}"
    failing = [row for row in rows if row[0] < AA_CONTRAST]
    worst = "\n".join(f"  {ratio:.2f}:1  {kind:<24} {colour} on {background}  {text!r}"
                      for ratio, kind, text, colour, background in failing[:15])
    assert not failing, (f"/{path} ({scheme}): {len(failing)} of {len(rows)} texts below {AA_CONTRAST}:1, "
                         f"worst first:\n{worst}")


@pytest.mark.parametrize("path", list(PAGES))
def test_chart_text_and_captions_reach_wcag_aa(browser: Any, base_url: str, path: str) -> None:
    """Every chart label, title and legend entry, and every caption, is at least 4.5:1 against its background, in
    both themes: the page loads in one (FIRST_SCHEME) and is measured, then the browser's colour scheme is switched
    in place (`switch_scheme` asserts the page is drawn in the other theme) and it is measured again."""
    first = FIRST_SCHEME[path]
    second = "dark" if first == "light" else "light"
    context = new_context(browser, color_scheme=first)
    try:
        tab = context.new_page()
        open_page(tab, page_url(base_url, f"/{path}", PAGES[path]))
        wait_for_chart_text(tab)
        assert_contrast(tab, path, first)
        switch_scheme(tab, second)
        wait_for_chart_text(tab)
        assert_contrast(tab, path, second)
    finally:
        context.close()
