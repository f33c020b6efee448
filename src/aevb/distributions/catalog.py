"""Every distribution section 2.4 of the paper names as reparameterizable, with the trick its ``rsample`` uses.

torch's classes are re-exported unchanged where they have ``rsample``; the families torch lacks live in
``inverse_cdf`` (Logistic, Rayleigh, Reciprocal, Gompertz, Erlang) and ``location_scale`` (Triangular,
MultivariateStudentT).
"""

from torch.distributions import (
    Beta,
    Cauchy,
    Chi2,
    Dirichlet,
    Exponential,
    FisherSnedecor,
    Gamma,
    Gumbel,
    Laplace,
    LogNormal,
    MultivariateNormal,
    Normal,
    Pareto,
    StudentT,
    Uniform,
    Weibull,
)

from .inverse_cdf import Erlang, Gompertz, Logistic, Rayleigh, Reciprocal
from .location_scale import MultivariateStudentT, Triangular

# The paper's three families, as section 2.4 lists them (Logistic is named in two; the elliptical family is
# MultivariateNormal and MultivariateStudentT). Erlang is listed under inverse CDF by the paper, but its rsample
# is the composition "sum of k Exponentials"; RSAMPLE below says what each class actually does.
PAPER_FAMILIES: dict[str, tuple[str, ...]] = {
    "inverse_cdf": ("Exponential", "Cauchy", "Logistic", "Rayleigh", "Pareto", "Weibull", "Reciprocal",
                    "Gompertz", "Gumbel", "Erlang"),
    "location_scale": ("Laplace", "StudentT", "Logistic", "Uniform", "Triangular", "Normal",
                       "MultivariateNormal", "MultivariateStudentT"),
    "composition": ("LogNormal", "Gamma", "Dirichlet", "Beta", "Chi2", "FisherSnedecor"),
}

# Class name -> (trick its rsample uses, how). "implicit" is torch's implicit reparameterization of the Gamma
# (gradient of the sample through the CDF, Figurnov et al. 2018), which is not one of the paper's three tricks.
RSAMPLE: dict[str, tuple[str, str]] = {
    "Exponential": ("inverse_cdf", "torch: -log(1 - u) / rate (exponential_ kernel)"),
    "Cauchy": ("inverse_cdf", "torch: loc + scale tan(pi (u - 1/2)) (cauchy_ kernel)"),
    "Logistic": ("inverse_cdf", "aevb: loc + scale logit(u); also location-scale"),
    "Rayleigh": ("inverse_cdf", "aevb: scale sqrt(-2 log(1 - u))"),
    "Pareto": ("inverse_cdf", "torch: scale exp(Exponential(alpha)) = scale (1 - u)^(-1/alpha)"),
    "Weibull": ("inverse_cdf", "torch: scale Exponential(1)^(1/concentration)"),
    "Reciprocal": ("inverse_cdf", "aevb: low (high / low)^u"),
    "Gompertz": ("inverse_cdf", "aevb: scale log(1 - log(1 - u) / concentration)"),
    "Gumbel": ("inverse_cdf", "torch: loc - scale log(-log u), u clamped to [tiny, 1 - eps]"),
    "Erlang": ("composition", "aevb: -sum_{j<=k} log(u_j) / rate, a sum of k inverse-CDF Exponentials"),
    "Laplace": ("location_scale", "torch: loc - scale sign(v) log(1 - |v|), v ~ U(-1, 1)"),
    "StudentT": ("location_scale", "torch: loc + scale n sqrt(df / w), w ~ Chi2(df) by implicit rsample"),
    "Uniform": ("location_scale", "torch: low + (high - low) u"),
    "Triangular": ("location_scale", "aevb: loc + scale eps, eps by the standard triangular's inverse CDF"),
    "Normal": ("location_scale", "torch: loc + scale n"),
    "MultivariateNormal": ("location_scale", "torch: loc + L n"),
    "MultivariateStudentT": ("location_scale", "aevb: loc + L n sqrt(df / w), w ~ Chi2(df) by implicit rsample"),
    "LogNormal": ("composition", "torch: exp(loc + scale n), the paper's composition"),
    "Gamma": ("implicit", "torch: implicit reparameterization, not the paper's sum of Exponentials"),
    "Dirichlet": ("implicit", "torch: implicit reparameterization (normalized Gammas in value only)"),
    "Beta": ("implicit", "torch: through Dirichlet, implicit reparameterization"),
    "Chi2": ("implicit", "torch: Gamma(df / 2, 1 / 2), implicit reparameterization"),
    "FisherSnedecor": ("implicit", "torch: ratio of two implicit-reparameterized Gammas"),
}

# CLI names (lower case) -> class; the CLI reads the keys for ``choices=``.
BY_NAME: dict[str, type] = {
    "exponential": Exponential,
    "cauchy": Cauchy,
    "logistic": Logistic,
    "rayleigh": Rayleigh,
    "pareto": Pareto,
    "weibull": Weibull,
    "reciprocal": Reciprocal,
    "gompertz": Gompertz,
    "gumbel": Gumbel,
    "erlang": Erlang,
    "laplace": Laplace,
    "student_t": StudentT,
    "uniform": Uniform,
    "triangular": Triangular,
    "normal": Normal,
    "multivariate_normal": MultivariateNormal,
    "multivariate_student_t": MultivariateStudentT,
    "log_normal": LogNormal,
    "gamma": Gamma,
    "dirichlet": Dirichlet,
    "beta": Beta,
    "chi2": Chi2,
    "fisher_snedecor": FisherSnedecor,
}

__all__ = sorted(RSAMPLE) + ["BY_NAME", "PAPER_FAMILIES", "RSAMPLE"]
