"""Tools that read finished runs: the token-weight inspector, the probe-fidelity check, reports and their
statistics."""
