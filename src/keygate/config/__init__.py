"""Configuration: the environment and YAML read into typed settings, the provider catalog, and
the checks on every value."""
