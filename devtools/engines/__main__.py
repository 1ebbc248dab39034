"""``python -m devtools.engines up|down|status|run``; see the package docstring."""

from . import main

raise SystemExit(main())
