"""Section 2.4's reparameterizable distributions and the families of q(z|x) and p(z) built from them.

`catalog` lists every distribution the paper names with the trick its ``rsample`` uses (torch's classes where they
have ``rsample``; aevb's own in `inverse_cdf` and `location_scale`); `kl` adds the closed-form KL pairs torch
lacks (registered with torch on import); `families` turns an encoder's raw outputs into q(z|x) and names the priors.
"""
from . import kl as _kl  # noqa: F401  (registers aevb's KL pairs with torch)
from .catalog import *  # noqa: F401,F403
from .catalog import BY_NAME, PAPER_FAMILIES, RSAMPLE, __all__  # noqa: F401
