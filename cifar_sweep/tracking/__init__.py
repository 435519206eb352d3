"""The only package that imports MLflow: the run (lifecycle, params, metrics, images, datasets), the
store (created once, reads for the commands), reaping."""
