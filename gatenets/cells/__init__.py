"""Recurrent cells, one file per family. Public names are re-exported by ``gatenets``."""
