"""Per-layer gradient health of any PyTorch model (the live monitor loads torch on first use)."""
