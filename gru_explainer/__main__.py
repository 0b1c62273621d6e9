"""``python -m gru_explainer``: the command line (see `gru_explainer.cli`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
