"""Exports that leave the workbench — adapter, merged safetensors, GGUF (our converter + llama.cpp K-quants),
an Ollama Modelfile, recipes — each loaded back and compared with its source before it is called done."""
from core.export.spec import FORMAT_LABELS, FORMATS, ExportSpec

__all__ = ["ExportSpec", "FORMATS", "FORMAT_LABELS"]
