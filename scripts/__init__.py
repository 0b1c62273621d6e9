"""Development scripts: the test runner (test.sh) and the browser harness (screenshots.py); not library code."""
