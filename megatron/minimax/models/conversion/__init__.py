"""HF <-> Megatron weight conversion: declarative mappings and the live-model adapter."""
