"""The traffic policy kept across restarts and shared by gateway replicas: one codec, one
compare-and-swap (the keeper), a state file or a ConfigMap to keep it in."""
