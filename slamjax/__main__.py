"""``python -m slamjax``: the ``slamjax`` command (:func:`slamjax.cli.main`)."""

import sys

from slamjax.cli import main

if __name__ == "__main__":
    sys.exit(main())
