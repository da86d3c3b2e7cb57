"""Object storage (S3 or local disk) and job records (Redis)."""
