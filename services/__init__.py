"""The five market services, the simulated community and the command line."""
