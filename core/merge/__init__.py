"""Merging models with mergekit: a method registry (the page is generated from it), a pre-flight that
reads only configs and safetensors headers, adapter folding, the merge job and the base → fine-tuned sweep."""
from core.merge.methods import DEFAULT_SWEEP, METHODS, SWEEP_METHODS, MergeMethod, MethodParam, get_method, method_table
from core.merge.spec import MergeSpec

__all__ = ["DEFAULT_SWEEP", "METHODS", "SWEEP_METHODS", "MergeMethod", "MethodParam", "MergeSpec", "get_method", "method_table"]
