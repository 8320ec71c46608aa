"""Configuration: daemon settings (environment and config file) and the registry of customer accounts."""
