"""Text from visitors is never Markdown, in a real browser: every page opened with a URL full of links, images,
HTML, icon and emoji shortcodes and formatting (in config fields, page keys, unknown keys and unknown dotted keys)
shows that text literally. No `<a>` on the page points anywhere the URL named, no `<img>` loads from it, no icon
or emoji is drawn from a shortcode in it, nothing in it is bold, and the text itself is still visible.

All pages load at once (one browser session each, against the one server), so the test takes one page's time.
"""

from __future__ import annotations

from urllib.parse import urlencode

import pytest

from scripts.screenshots import new_context, track_layout, wait_for_app
from tests.test_hardening_urls import HOSTILE  # the AppTest check's keys and values, opened here in Chromium
from ui import WORD_JOINER

pytestmark = pytest.mark.e2e

QUERY = urlencode(HOSTILE)
SHOWN = ("http://evil.example www.evil.example a@evil.example", "[click](http://evil.example/)",
         ":material/warning: :smile: **bold**", "explorer.bogus", "foo.bar", "www.evil.example")
"""Pieces of the URL every page's notices must show."""

FORBIDDEN = """() => {
    const main = document.querySelector('[data-testid="stMain"]') || document.body;
    const bad = [];
    for (const a of document.querySelectorAll('a[href]')) {
        const href = a.getAttribute('href').toLowerCase();
        if (href.includes('evil') || href.startsWith('javascript:') || href.startsWith('mailto:'))
            bad.push('link ' + href);
    }
    for (const img of document.querySelectorAll('img[src]'))
        if (img.getAttribute('src').includes('evil')) bad.push('image ' + img.getAttribute('src'));
    for (const icon of main.querySelectorAll('[data-testid="stMarkdownContainer"] [data-testid="stIconMaterial"]'))
        bad.push('icon ' + icon.textContent);
    for (const strong of main.querySelectorAll('[data-testid="stMarkdownContainer"] strong'))
        if (strong.textContent.includes('bold')) bad.push('bold ' + strong.textContent);
    if (main.innerText.includes('\\u{1F604}')) bad.push('emoji from :smile:');
    return bad;
}"""


NOTICES_DRAWN = """() => [...document.querySelectorAll('[data-testid="stAlertContentWarning"]')].every(alert => {
    const text = alert.querySelector('[data-testid="stMarkdownContainer"]');
    return text && text.innerText.trim().length > 0;
})"""


def test_hostile_urls_on_every_page_show_their_text_literally(browser, base_url, pages):
    contexts = [new_context(browser) for _ in pages]
    try:
        tabs = [ctx.new_page() for ctx in contexts]
        for tab, page in zip(tabs, pages, strict=True):  # every session starts before any is awaited
            tab.goto(page.url(base_url, QUERY), wait_until="commit")
            track_layout(tab)  # awaited one after another, the later pages have long been still
        for tab, page in zip(tabs, pages, strict=True):
            wait_for_app(tab, timeout_ms=180_000)
            # An alert's Markdown can draw a moment after the run ended (its renderer loads lazily; on a loaded
            # machine an alert showed only its icon when read): wait until every notice shows its text.
            tab.wait_for_function(NOTICES_DRAWN, timeout=60_000, polling=200)
            assert tab.evaluate(FORBIDDEN) == [], page.name
            notices = tab.locator('[data-testid="stAlertContentWarning"]').all_inner_texts()
            text = " ".join(notices).replace(WORD_JOINER, "")  # ui.literal keeps ":material/" from Streamlit's rewrite
            missing = [shown for shown in SHOWN if shown not in text]  # each literally, as the URL gave it
            if missing:  # every notice in full (an assert's message would be cut short): what the page did show
                pytest.fail(f"{page.name}: missing {missing} in its {len(notices)} notices:\n" + "\n".join(
                    repr(n) for n in notices), pytrace=False)
            assert "explorer.bogus" not in tab.url and "foo.bar" not in tab.url, tab.url  # noticed and dropped
    finally:
        for ctx in contexts:
            ctx.close()
