"""Load the fakes' pytest plugin here, after coverage has started, instead of by entry point
(``-p no:waterfall_fakes`` in pyproject.toml): an entry-point plugin is imported before
pytest-cov begins measuring, so the package's import-time lines would count as missed."""

pytest_plugins = ["waterfall_fakes.pytest_plugin"]
