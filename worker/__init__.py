"""Celery worker processes: the GPU pipeline, the decompose task and exports."""
