"""Carbon autoscaler: carbon and performance models, carbon-intensity sources, the MILP planner."""
