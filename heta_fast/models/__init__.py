"""Model loading: aliases, GGUF conversion cache, local folders and hub ids."""
