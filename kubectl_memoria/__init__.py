"""``kubectl memoria``: a kubectl plugin for day-2 operations on MemoriaRegions.

``status`` (who leads each group, since when and why; each region's role, readiness, health,
sync and last decrement), ``promote``, ``fence`` / ``unfence`` (with the Events that answer
them) and ``report`` (a support bundle with secrets redacted). Installed as the console script
``kubectl-memoria``; it imports only the standard library, PyYAML and :mod:`memoria.contract`,
so it answers fast.
"""

from .cli import main

__all__ = ["main"]
