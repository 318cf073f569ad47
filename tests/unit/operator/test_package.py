"""``kopf run -m memoria_operator``, kopf's own convention, finds the operator's handlers: the
package registers them when it is imported."""

from __future__ import annotations

import json

from testbed.paths import run_python

# kopf's registry keeps its handlers by the kind of cause they answer
LIST_HANDLERS = """
import json, kopf, memoria_operator
registry = kopf.get_default_registry()
print(json.dumps({
    kind: sorted({h.id for h in getattr(registry, kind).get_all_handlers()})
    for kind in ("_activities", "_changing", "_watching")
}))
"""


def test_importing_the_package_registers_the_handlers() -> None:
    proc = run_python(LIST_HANDLERS)
    assert proc.returncode == 0, proc.stderr
    handlers = json.loads(proc.stdout)
    assert {"login", "configure", "cleanup"} <= set(handlers["_activities"])
    assert "reconcile_region" in handlers["_changing"]  # on resume, create and update
    assert {"observe_region", "owned_deployment_changed"} <= set(handlers["_watching"])
