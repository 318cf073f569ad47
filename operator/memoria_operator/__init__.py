"""memoria-operator: run Memoria regions on Kubernetes."""
