"""Records -> findings: what is wrong, in which layers, why, and what fixes it (no torch)."""
