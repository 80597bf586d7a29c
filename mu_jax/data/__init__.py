"""Data: readers, split manifests, the input pipeline."""
