"""memoria-operator: run Memoria regions on Kubernetes.

Importing the package registers its kopf handlers, so kopf's own convention,
``kopf run -m memoria_operator``, serves them just as ``memoria-operator run`` does. The import
brings in kopf and the Kubernetes client, never the region runtime's HTTP stack (FastAPI).
"""

from . import handlers

__all__ = ["handlers"]
