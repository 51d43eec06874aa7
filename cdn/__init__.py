"""The CDN: origin, cache tiers and URL signing."""
