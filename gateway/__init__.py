"""The API gateway (role ``gateway``): ``python -m gateway``."""
