"""Model specs and HF <-> Megatron mappings."""
