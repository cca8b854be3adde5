"""The version of gatenets, in a module the command line can read without the package."""

__version__ = "0.1.0"
