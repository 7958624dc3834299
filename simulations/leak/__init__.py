"""Privacy-leakage experiments: attack scores, attack metrics and their plots."""
