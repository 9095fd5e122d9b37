"""The ledger-writer service."""
