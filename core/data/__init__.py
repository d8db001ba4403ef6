"""Dataset loading, masking, curation."""
