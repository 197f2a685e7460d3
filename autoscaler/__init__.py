"""Carbon autoscaler: carbon and performance models, carbon-intensity sources, the MILP planner,
the policies, the live actor and the trace-driven simulator."""
