"""gradclip: experiments on the dynamics of clipped SGD.

Reproduces, by experiment, the claims of A. Ramaswamy, "Gradient Clipping in Deep Learning:
A Dynamical Systems Perspective", ICPRAM 2023.
"""

__version__ = "0.1.0"
