"""MiniMax-M2 family (M2, M2.1, M2.5, M2.7): HF config and weight mappings, model builder."""
