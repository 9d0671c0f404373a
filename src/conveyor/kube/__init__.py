"""Kubernetes: the manifests conveyor applies (pure) and the client that applies them."""
