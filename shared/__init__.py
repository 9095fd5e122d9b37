"""microte's common library: the pure market core, the wire contract and the runtime."""
