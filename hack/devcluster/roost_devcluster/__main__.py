"""``python -m roost_devcluster``: see ``roost_devcluster.cli``."""

from roost_devcluster.cli import main

raise SystemExit(main())
