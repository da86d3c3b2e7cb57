"""HTTP API process (Flask). Never imports torch."""
