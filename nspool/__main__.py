"""``python -m nspool``: the command line of :mod:`nspool.cli`."""

from __future__ import annotations

from .cli import main

raise SystemExit(main())
