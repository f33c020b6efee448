"""The paper's baselines and experiments: wake-sleep, Monte Carlo EM (Appendix E), full VB (Appendix F), the
autoencoder family, and `reproduce`, which runs Figures 2-5 end to end."""
