"""``python -m vcore.dashboard ENTITY/PROJECT [--group G] [--dry-run FILE]``: the W&B workspace and sweep report
(:mod:`vcore.tools.dashboard`)."""

import sys

from vcore.tools.dashboard import main

if __name__ == "__main__":
    sys.exit(main())
