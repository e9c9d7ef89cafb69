"""The three HETA signals, each a function of what the model adapter gives it."""
