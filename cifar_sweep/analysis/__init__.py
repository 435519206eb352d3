"""What a run logs beyond metrics: diagnostics, figures, image grids."""
