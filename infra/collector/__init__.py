"""The tracing collector and viewer (role ``collector``): ``python -m infra.collector``."""
