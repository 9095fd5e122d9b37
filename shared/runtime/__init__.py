"""What every service needs for I/O: settings, broker topology, Redis and ledger stores, logging, metrics."""
