"""The retraining worker: receives events, trains, validates, registers, starts a canary."""
