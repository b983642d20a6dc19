"""The search: ask/tell bisection with its budget, unit orderings, and the probe journal."""
