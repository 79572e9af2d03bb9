"""Hugging Face interop: `export-hf` (pretrain.hf.export), `import-hf` (pretrain.hf.importer) and the
trust_remote_code model written into every export (pretrain.hf.modeling_retinascale, self-contained)."""
