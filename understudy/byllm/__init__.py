"""The byLLM integration: the Jac plugin (`plugin`) and what the proxy, routing and training
read of byLLM's prompts (`prompt`)."""
