"""medscale: one recipe, three launchers, one training entry point, one registry."""
__version__ = "0.1.0"
