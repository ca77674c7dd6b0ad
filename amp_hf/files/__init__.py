"""Disk formats, with no family knowledge: config reading and checked loading, the embedded-model alias table,
output folders, provenance, the sentence-transformers format, config parsing, and the artifact names."""
