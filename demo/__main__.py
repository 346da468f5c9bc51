"""``python -m demo``: the Quickstart demo (see demo/run.py)."""

from demo.run import main

raise SystemExit(main())
