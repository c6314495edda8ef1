"""The shared API client machinery of kubesmith's components (kubeconfig loading first)."""
