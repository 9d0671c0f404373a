"""conveyor: zero-downtime deployments for small and mid-size teams."""

__version__ = "0.1.0"
