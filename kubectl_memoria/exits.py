"""What the plugin's exit status means (a module of its own: ``status`` imports it without
the actions' code)."""

from __future__ import annotations

from enum import IntEnum


class Exit(IntEnum):
    """What the plugin's exit status means."""

    OK = 0
    PROBLEM = 1  # status: something needs a look; promote: refused
    USAGE = 2  # argparse's own code for a bad command line
    NOT_FOUND = 3  # no such region, or no region in the namespace
    API = 4  # the API server could not be asked (config, connection, permission)
    TIMEOUT = 5  # the request was written but the operator did not answer in time
