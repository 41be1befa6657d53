"""The retraining worker: receives the monitor's events, trains, validates, registers a
candidate and rolls it out through a canary."""
