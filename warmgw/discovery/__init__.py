"""Discovery sources: each turns the outside world into the desired set of replicas."""
