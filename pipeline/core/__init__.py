"""Shared machinery every task uses: trainer, callbacks, gradient instrumentation, tracking,
datasets, distribution, on-disk formats and data sources."""
