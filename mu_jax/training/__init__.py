"""Training: state, losses, data-parallel steps, the fit loop."""
