"""Privacy-leakage experiments (`feddistill leak`): attacks on simulated clients, their scores,
metrics, plots and reports."""
