"""Looking at a trained run: pictures (plots), the self-contained HTML report, restoration with the model as a
prior, and posterior diagnostics. Each module is imported on its own."""
