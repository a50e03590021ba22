"""unifork broker: the control plane (Celery app, cluster state, the CLI)."""
