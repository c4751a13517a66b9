"""ml_collections config files (`get_config(arg)`), one per program."""
