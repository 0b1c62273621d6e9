"""End-to-end tests in a real browser (marker `e2e`)."""
