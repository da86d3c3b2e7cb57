"""layerq: turn images into editable RGBA layers as asynchronous jobs.

Shared, torch-free pieces used by every process: configuration, job parameters and records,
typed task messages, the error hierarchy, the HTTP client and the CLI.
"""

__version__ = "0.1.0"
