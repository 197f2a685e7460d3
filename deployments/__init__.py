"""The Ray Serve application: OpenAI ingress, vLLM replicas, prefix-affinity routing, the plan-following autoscaling policy."""
