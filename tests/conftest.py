pytest_plugins = ["tests.plugins.s3server", "tests.plugins.stack"]
