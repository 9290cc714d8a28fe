"""morphlm: build, grow, shrink and reroute transformer language models."""
