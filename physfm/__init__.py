"""physfm: reproducible foundation-model studies for particle and neutrino physics."""

__version__ = "0.1.0"
