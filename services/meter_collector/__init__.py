"""The meter-collector service."""
