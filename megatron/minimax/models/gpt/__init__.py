"""GPT layer specs that carry this package's native options."""
