"""pytest plugins shared by layerq's test suites (load with `-p tests.plugins.<name>` or from conftest)."""
