"""The docs screenshot machinery (scripts.screenshots) on the session's server: full height, not blank."""

from __future__ import annotations

import pytest
from PIL import Image

from scripts.screenshots import MIN_PIXEL_STD, PHONE_PAGES, PHONE_VIEWPORT, ROOT, VIEWPORT, app_pages, capture_pages

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


def test_phone_capture_is_390_px_wide_and_does_not_pan(browser, base_url, tmp_path):
    home = [p for p in app_pages(ROOT) if p.name in PHONE_PAGES]
    results = capture_pages(browser, base_url, home, tmp_path, phone_pages=PHONE_PAGES)  # asserts: no sideways pan
    assert [path.name for _, path, _ in results] == [f"{p.name}.png" for p in home] + [f"{p.name}-phone.png"
                                                                                      for p in home]
    with Image.open(results[-1][1]) as image:
        assert image.size[0] == PHONE_VIEWPORT["width"]
    assert results[-1][2] > MIN_PIXEL_STD


def test_committed_screenshots_exist_for_every_page():
    for app_page in app_pages(ROOT):
        path = ROOT / "docs" / "screenshots" / f"{app_page.name}.png"
        assert path.is_file(), f"{path} missing: run python -m scripts.screenshots"
        with Image.open(path) as image:
            assert image.size[0] >= 800 and image.size[1] >= VIEWPORT["height"]
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for name in PHONE_PAGES:
        path = ROOT / "docs" / "screenshots" / f"{name}-phone.png"
        assert path.is_file(), f"{path} missing: run python -m scripts.screenshots"
        with Image.open(path) as image:
            assert image.size[0] == PHONE_VIEWPORT["width"] and image.size[1] >= PHONE_VIEWPORT["height"]
        assert f"docs/screenshots/{name}-phone.png" in readme, "the README shows the phone screenshot"
