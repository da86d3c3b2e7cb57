"""Speed-ups for a loaded `QwenImageLayeredPipeline`; the public names live in `worker.acceleration`."""
