"""The order-intake service."""
