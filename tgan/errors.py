"""The error a user fixes in the config: a leaf module, so tgan.config and every layer above can raise it."""


class ConfigError(ValueError):
    """A config value is invalid; the message names the dotted field and what would be valid."""
