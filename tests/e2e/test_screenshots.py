"""The docs screenshot machinery (gru_explainer.screenshots) on the session's server: full height, not blank."""

from __future__ import annotations

import pytest
from PIL import Image

from gru_explainer.screenshots import MIN_PIXEL_STD, ROOT, VIEWPORT, app_pages, capture_pages

pytestmark = pytest.mark.e2e


def test_capture_is_the_full_main_area_and_not_blank(browser, base_url, tmp_path):
    explorer = [p for p in app_pages(ROOT) if p.url_path == "explorer"]
    [(app_page, path, std)] = capture_pages(browser, base_url, explorer, tmp_path)
    assert path == tmp_path / "explorer.png"
    with Image.open(path) as image:
        width, height = image.size
    assert 800 <= width <= VIEWPORT["width"], "the main area, without the sidebar"
    assert height > 2 * VIEWPORT["height"], f"only {height} px tall: not the full height of the explorer"
    assert std > MIN_PIXEL_STD


def test_committed_screenshots_exist_for_every_page():
    for app_page in app_pages(ROOT):
        path = ROOT / "docs" / "screenshots" / f"{app_page.name}.png"
        assert path.is_file(), f"{path} missing: run python -m gru_explainer.screenshots"
        with Image.open(path) as image:
            assert image.size[0] >= 800 and image.size[1] >= VIEWPORT["height"]
