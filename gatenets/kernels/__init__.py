"""Fast sequence kernels chosen by the layers; private, used through the cells."""
