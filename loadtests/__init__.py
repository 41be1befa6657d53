"""Load generation and benchmarks: open-loop generator, scenarios, peer comparison."""
