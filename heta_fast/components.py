"""The names of HETA's three components, in the order the engine computes them.

One place for them: the config validates against it, the signal registry is keyed by it, the
result carries one tensor per name.
"""
COMPONENTS = ("flow", "curvature", "information")
